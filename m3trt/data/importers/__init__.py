"""Importers that turn public datasets into a JSONL manifest (DESIGN §3.1).

* :func:`import_nuswide` reads the official NUS-WIDE release: labels from the 81 concept
  ground-truth files, user tags from the 1k-tag matrix, the official train/test split.
* :func:`import_coco` reads a COCO instances JSON (labels = categories present), optionally with a
  captions JSON whose words become user tags.

Both write ``manifest.jsonl`` + ``labels.txt`` atomically with :func:`write_manifest`; every
problem with the inputs raises :class:`InputError` naming the file (and line) and the fix. Images
missing on disk are still written (the manifest reader reports them) and counted.

NUS-WIDE layout under ROOT (the two official archives, ``NUS-WIDE.zip`` with ImageList,
``NUS_WID_Tags.zip``, plus the images)::

    ConceptsList/Concepts81.txt        81 concept names, one a line (ROOT/Concepts81.txt accepted)
    ImageList/Imagelist.txt            all 269,648 images, C:\\ImageData\\Flickr\\actor\\0001_2.jpg
    ImageList/TrainImagelist.txt       the official train split, actor\\0001_2.jpg
    ImageList/TestImagelist.txt        the official test split
    Groundtruth/AllLabels/Labels_<concept>.txt   one 0/1 a line, aligned with Imagelist.txt
    NUS_WID_Tags/TagList1k.txt         the 1,000 tag names, one a line
    NUS_WID_Tags/AllTags1k.txt         one line per image: 1,000 tab-separated 0/1 values
    Flickr/<folder>/<file>.jpg         the images (another folder may be given)
"""

from m3trt.data.importers.coco import STOPWORDS, caption_tags, import_coco, infer_split
from m3trt.data.importers.common import ImportSummary
from m3trt.data.importers.nuswide import import_nuswide

__all__ = [
    "STOPWORDS",
    "ImportSummary",
    "caption_tags",
    "import_coco",
    "import_nuswide",
    "infer_split",
]
