"""Hostile folders and outputs (issue 10): nothing lost, nothing hung, nothing overwritten.

Each case checks: every good image annotated exactly once, every bad one in the errors file with
one reason, the documented exit code, and (for anything that could hang) a time limit.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m3trt.cli import main
from m3trt.data.images import DecodeBudget, load_image
from m3trt.errors import InputError
from m3trt.runtime.outputs import lock_path
from m3trt.runtime.results import (
    ResultWriter,
    done_paths,
    errors_path,
    join_list,
    read_results,
    split_list,
)

LATIN1 = b"caf\xe9.jpg"  # not UTF-8: what an old Latin-1 disk holds


def infer(*args):
    result = CliRunner().invoke(main, ["infer", *map(str, args), "--quiet"])
    return result.exit_code, result.output


def infer_subprocess(*args, timeout=90):
    """A real process, so that a hang is a failed test, not a hung suite."""
    args = [a if isinstance(a, str | bytes | os.PathLike) else str(a) for a in args]
    cmd = [sys.executable, "-m", "m3trt.cli", "-q", "infer", *map(os.fsdecode, args)]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)


def good_images(folder: Path) -> list[str]:
    return sorted(
        os.path.join(root, f)
        for root, _dirs, files in os.walk(folder)
        for f in files
        if f.endswith((".jpg", ".png")) and not f.startswith(("bad", "bomb"))
    )


@pytest.fixture
def photos(tmp_path, test_images) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(test_images, folder)
    return folder


def exactly_once(rows: list[dict], errors: list[dict], good: list[str], bad: list[str]) -> None:
    assert sorted(r["path"] for r in rows) == sorted(good)
    assert sorted(e["path"] for e in errors) == sorted(bad)
    assert all(isinstance(e["error"], str) and e["error"] for e in errors)


# --- 1. names that are not UTF-8 -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_non_utf8_names_round_trip_and_resume(tmp_path, int8_bundle, photos, fmt):
    src = good_images(photos)[0]
    good_name = os.path.join(os.fsencode(photos), LATIN1)
    shutil.copyfile(src, good_name)
    bad_name = os.path.join(os.fsencode(photos), b"bad-\xff\xfe.jpg")
    Path(os.fsdecode(bad_name)).write_bytes(b"not an image")
    newline_name = photos / "two\nlines\rand|bar.jpg"
    shutil.copyfile(src, newline_name)
    out = tmp_path / f"r.{fmt}"
    code, output = infer(int8_bundle, photos, "-o", out, "--batch-size", "4")
    assert code == 0, output
    out.read_text(encoding="utf-8")  # the files are valid UTF-8 whatever the names
    errors_path(out).read_text(encoding="utf-8")
    good = good_images(photos)
    assert os.fsdecode(good_name) in good and str(newline_name) in good
    rows, errors = read_results(out), read_results(errors_path(out))
    exactly_once(rows, errors, good, [os.fsdecode(bad_name)])
    latin = next(r for r in rows if r["path"] == os.fsdecode(good_name))
    assert Path(latin["path"]).exists()
    before = out.read_bytes()
    code, output = infer(int8_bundle, photos, "-o", out, "--resume")
    assert code == 0, output
    assert out.read_bytes() == before  # everything was done: nothing added, nothing lost


def test_a_summary_names_non_utf8_outputs_as_the_results_name_paths(tmp_path, int8_bundle, photos):
    """--summary-json wrote lone surrogates ("r\\udce9.jsonl"), which no UTF-8 reader keeps."""
    import base64

    out = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"r\xe9.jsonl")))
    summary = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"s\xe9.json")))
    code, output = infer(int8_bundle, photos, "-o", out, "--summary-json", summary)
    assert code == 0, output
    data = json.loads(summary.read_bytes().decode("utf-8"))
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # no lone surrogate left
    assert data["output"] == str(tmp_path / "r\ufffd.jsonl")
    assert base64.b64decode(data["output_bytes"]) == os.fsencode(out)
    assert base64.b64decode(data["errors_file_bytes"]) == os.fsencode(errors_path(out))
    assert "bundle_bytes" not in data  # a UTF-8 name is written as it is


def test_jsonl_path_field_is_readable_text_with_exact_bytes_beside_it(
    tmp_path, int8_bundle, photos
):
    shutil.copyfile(good_images(photos)[0], os.path.join(os.fsencode(photos), LATIN1))
    out = tmp_path / "r.jsonl"
    assert infer(int8_bundle, photos, "-o", out)[0] == 0
    raw = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    (row,) = [r for r in raw if "path_bytes" in r]
    assert row["path"].endswith("caf\ufffd.jpg")
    import base64

    assert base64.b64decode(row["path_bytes"]).endswith(LATIN1)


def test_csv_names_a_spreadsheet_would_run_are_defused(tmp_path, int8_bundle, photos, monkeypatch):
    """A PATH named '=HYPERLINK("x","y").jpg' reached a CSV cell as is: a spreadsheet runs
    it. The cell starts with a ' now; path_bytes keeps the name for --resume and read_results."""
    src = good_images(photos)[0]
    names = ['=HYPERLINK("x","y").jpg', "@SUM(1).jpg", "+1.jpg", "-1.jpg", "\tx.jpg"]
    for name in names:
        shutil.copy(src, tmp_path / name)
    monkeypatch.chdir(tmp_path)

    def infer_names(*args):  # names after "--", where infer()'s trailing --quiet cannot go
        result = CliRunner().invoke(main, ["--quiet", "infer", *map(str, args)])
        return result.exit_code, result.output

    out = tmp_path / "sheet.csv"
    code, output = infer_names(int8_bundle, "-o", out, "--", *names[:3])
    assert code == 0, output
    text = out.read_text(encoding="utf-8")
    cells = [line.split(",")[0] for line in text.splitlines()[1:]]
    assert cells == ['"\'=HYPERLINK(""x""', "'@SUM(1).jpg", "'+1.jpg"]
    code, output = infer_names(int8_bundle, "-o", out, "--resume", "--", *names)
    assert code == 0, output
    assert sorted(r["path"] for r in read_results(out)) == sorted(names)
    assert out.read_text(encoding="utf-8").startswith(text)  # the first three not redone
    jsonl = tmp_path / "r.jsonl"  # no spreadsheet reads JSON Lines: names stay as they are
    assert infer_names(int8_bundle, "-o", jsonl, "--", names[0])[0] == 0
    assert json.loads(jsonl.read_text(encoding="utf-8"))["path"] == names[0]


def test_csv_lists_escape_the_separator():
    labels = ["a|b", "back\\slash", "", "plain", "|"]
    assert split_list(join_list(labels)) == labels
    assert split_list("") == []


# --- 2. tag sources that would hang or exhaust memory --------------------------------------------


def test_fifo_and_dev_zero_tag_sidecars_fail_one_image_each(tmp_path, int8_bundle, photos):
    good = good_images(photos)
    os.mkfifo(good[0] + ".tags")
    os.symlink("/dev/zero", good[1] + ".tags")
    Path(good[2] + ".tags").write_bytes(b"\xff\xfe\x00binary")
    out = tmp_path / "r.jsonl"
    started = time.monotonic()
    proc = infer_subprocess(int8_bundle, photos, "-o", out, "--tags", "sidecar", "--workers", 2)
    assert time.monotonic() - started < 90
    assert proc.returncode == 0, proc.stderr
    errors = read_results(errors_path(out))
    exactly_once(read_results(out), errors, good[3:], good[:3])
    reasons = {e["path"]: e["error"] for e in errors}
    assert "FIFO" in reasons[good[0]] and "character device" in reasons[good[1]]
    assert "not UTF-8" in reasons[good[2]]


# --- 3. --resume validates before it changes anything --------------------------------------------


@pytest.mark.parametrize("which", ["results", "errors"])
def test_resume_never_cuts_a_file_that_is_not_ours(tmp_path, int8_bundle, photos, which):
    out = tmp_path / "notes.jsonl"
    target = out if which == "results" else errors_path(out)
    target.write_bytes(b"my only line, no newline")
    code, output = infer(int8_bundle, photos, "-o", out, "--resume")
    assert code == 2 and "not a line m3trt wrote" in output and str(target) in output
    assert target.read_bytes() == b"my only line, no newline"


def test_resume_refuses_a_foreign_csv_untouched(tmp_path, int8_bundle, photos):
    out = tmp_path / "sheet.csv"
    out.write_bytes(b"name,price\napple,3\npear,")
    code, output = infer(int8_bundle, photos, "-o", out, "--resume")
    assert code == 2 and "header" in output
    assert out.read_bytes() == b"name,price\napple,3\npear,"


# --- 4. outputs never replace inputs or each other -----------------------------------------------


def test_report_and_summary_need_overwrite_and_never_hit_inputs(tmp_path, int8_bundle, photos):
    out = tmp_path / "r.jsonl"
    mine = tmp_path / "mine.html"
    mine.write_text("my page")
    code, output = infer(int8_bundle, photos, "-o", out, "--report", mine)
    assert code == 2 and "--overwrite" in output and mine.read_text() == "my page"
    summary = tmp_path / "s.json"
    summary.write_text("{}")
    code, output = infer(int8_bundle, photos, "-o", out, "--summary-json", summary)
    assert code == 2 and summary.read_text() == "{}"
    photo = good_images(photos)[0]
    before = Path(photo).read_bytes()
    for option in ("--report", "--summary-json", "-o"):
        code, output = infer(int8_bundle, photos, "-o", out, option, photo, "--overwrite")
        assert code == 2, output
        assert Path(photo).read_bytes() == before
    code, output = infer(int8_bundle, photos, "-o", out, "--report", out, "--overwrite")
    assert code == 2 and "would be the results file too" in output
    assert not out.exists()
    # What m3trt wrote itself, --resume rewrites (the natural "same command plus --resume").
    report = tmp_path / "report.html"
    assert infer(int8_bundle, photos, "-o", out, "--report", report)[0] == 0
    code, output = infer(int8_bundle, photos, "-o", out, "--report", report, "--resume")
    assert code == 0, output


def test_a_killed_runs_report_temp_files_are_cleared(tmp_path, int8_bundle, photos):
    """SIGKILL runs no cleanup: each killed run left its report's part files (3.5 MB of
    thumbnails on 900 images) for good. The next run on that report clears them under its
    lock; a link of that name, and names of another pattern, are left alone."""
    out, report = tmp_path / "r.jsonl", tmp_path / "r.html"
    left = [tmp_path / f".r.html.{kind}-4242-0123abcd" for kind in ("part", "fail", "tmp")]
    for path in left:
        path.write_bytes(b"<div>thumbnail</div>" * 1000)
    kept = tmp_path / ".r.html.part-1-ffffffff"
    kept.symlink_to(out)
    other = tmp_path / ".r.html.part-x"
    other.write_text("not ours")
    code, output = infer(int8_bundle, photos, "-o", out, "--report", report)
    assert code == 0, output
    assert not any(p.exists() for p in left)
    assert kept.is_symlink() and other.read_text() == "not ours"


# --- 5. two runs on one output -------------------------------------------------------------------


def test_second_run_on_a_locked_output_says_who_and_exits_2(tmp_path, int8_bundle, photos):
    out = tmp_path / "r.jsonl"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from m3trt.runtime.outputs import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, output = infer(int8_bundle, photos, "-o", out, *extra)
            assert code == 2, output
            assert f"pid {holder.pid}" in output and "another m3trt run" in output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert infer(int8_bundle, photos, "-o", out)[0] == 0  # a dead holder's lock is free
    assert lock_path(out).exists()


def test_a_hard_link_to_results_being_written_is_refused(tmp_path, int8_bundle, photos):
    """The lock is by name, and a hard link is another name: a --resume through it appended to
    the file a running job was writing, which then failed its own --resume ("not a line m3trt
    wrote"). The file itself is locked now, and --overwrite empties it only once it holds it."""
    first = tmp_path / "a.jsonl"
    with ResultWriter(first, "jsonl", resume=False, overwrite=False) as writer:
        done = good_images(photos)[0]
        writer.write({"path": done, "labels": [], "scores": [], "k": 0, "quantity": 0.0})
        writer.flush()
        before = first.read_bytes()
        os.link(first, tmp_path / "b.jsonl")
        for extra in ("--resume", "--overwrite"):
            code, output = infer(int8_bundle, photos, "-o", tmp_path / "b.jsonl", extra)
            assert code == 2 and "under another name (a hard link to it)" in output, output
            assert first.read_bytes() == before
        # --resume reads and cuts the file first: held by then too (it cut the other run's
        # rows appended between its scan and its cut)
        with pytest.raises(InputError, match="a hard link to it"):
            done_paths(tmp_path / "b.jsonl", "jsonl")
    code, output = infer(int8_bundle, photos, "-o", tmp_path / "b.jsonl", "--resume")
    assert code == 0, output  # once the first writer is done
    assert sorted(r["path"] for r in read_results(first)) == good_images(photos)


def test_concurrent_resume_runs_never_duplicate_rows(tmp_path, int8_bundle, photos):
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "m3trt.cli", "-q", "infer", str(int8_bundle), str(photos)]
    cmd += ["-o", str(out), "--resume", "--batch-size", "1", "--workers", "1"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) in ([0, 0], [0, 2]), [p.stderr.read() for p in procs]
    for p in procs:
        p.stderr.close()
    rows = read_results(out)
    assert sorted(r["path"] for r in rows) == good_images(photos)  # each exactly once


# --- 6. sidecars: never over an output, failures are per image -----------------------------------


def test_sidecar_colliding_with_the_results_is_that_images_error(tmp_path, int8_bundle, photos):
    good = good_images(photos)
    victim = Path(good[0])
    out = victim.with_suffix(".txt")  # photos/x.txt: the --write-txt sidecar of photos/x.jpg
    code, output = infer(int8_bundle, photos, "-o", out, "--write-txt", "--overwrite")
    assert code == 0, output
    rows, errors = read_results(out), read_results(errors_path(out))
    exactly_once(rows, errors, good[1:], [str(victim)])
    assert "would replace an output" in errors[0]["error"]


def test_unwritable_sidecar_fails_that_image_only(tmp_path, int8_bundle, photos):
    good = good_images(photos)
    Path(good[0]).with_suffix(".txt").mkdir()  # a folder in the way
    out = tmp_path / "r.jsonl"
    code, output = infer(int8_bundle, photos, "-o", out, "--write-txt")
    assert code == 0 and "1 existing sidecars kept" in output  # not replaced: not ours
    code, output = infer(int8_bundle, photos, "-o", out, "--write-txt", "--overwrite")
    assert code == 0, output  # the folder cannot be replaced: that image fails, the run goes on
    exactly_once(read_results(out), read_results(errors_path(out)), good[1:], good[:1])
    assert "cannot write sidecar" in read_results(errors_path(out))[0]["error"]


def test_no_sidecar_where_a_link_leads_outside_the_paths(tmp_path, int8_bundle, photos):
    """photos/evil -> a folder elsewhere (as an unpacked archive may hold): --write-txt
    --overwrite replaced the captions beside every image there. The link is still read; its
    images fail with the reason, and naming that folder as a PATH writes there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    src = good_images(photos)[0]
    shutil.copy(src, victim / "photo.jpg")
    (victim / "photo.txt").write_text("the owner's caption\n")
    (photos / "evil").symlink_to(victim)
    out = tmp_path / "r.jsonl"
    code, output = infer(int8_bundle, photos, "-o", out, "--write-txt", "--overwrite")
    assert code == 0, output
    assert (victim / "photo.txt").read_text() == "the owner's caption\n"
    assert sorted(os.listdir(victim)) == ["photo.jpg", "photo.txt"]
    errors = read_results(errors_path(out))
    assert [e["path"] for e in errors] == [str(photos / "evil" / "photo.jpg")]
    assert "a link leads its folder outside the PATHS given" in errors[0]["error"]
    assert len(read_results(out)) == len(good_images(photos))  # the rest (os.walk: no link)
    code, output = infer(int8_bundle, photos, victim, "-o", out, "--write-txt", "--overwrite")
    assert code == 0, output
    assert (victim / "photo.txt").read_text() != "the owner's caption\n"  # asked for


# --- 7. memory: decodes share a budget -----------------------------------------------------------


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A real, decodable RGB PNG of width x height that compresses to almost nothing."""
    row = b"\x00" + b"\x00" * (3 * width)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def test_decode_budget_runs_large_images_one_at_a_time(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    bombs = [png_bomb(tmp_path / f"bomb{i}.png", 1500, 1500) for i in range(4)]
    budget = DecodeBudget(8 << 20)  # each bomb needs ~22 MB: over the budget, so alone
    active, most = [0], [0]
    real_hold = budget.hold

    def counting_hold(cost):
        class Hold:
            def __enter__(self):
                self.inner = real_hold(cost)
                self.inner.__enter__()
                active[0] += 1
                most[0] = max(most[0], active[0])

            def __exit__(self, *exc):
                active[0] -= 1
                return self.inner.__exit__(*exc)

        return Hold()

    budget.hold = counting_hold
    with ThreadPoolExecutor(4) as pool:
        arrays = list(pool.map(lambda p: load_image(p, 32, budget=budget), bombs))
    assert all(a.shape == (32, 32, 3) for a in arrays)
    assert most[0] == 1 and budget.in_use == 0


def test_bombs_in_a_folder_are_decoded_or_refused_not_fatal(tmp_path, int8_bundle, photos):
    png_bomb(photos / "bomb-ok.png", 2000, 2000)
    png_bomb(photos / "bomb-big.png", 4000, 4000)
    out = tmp_path / "r.jsonl"
    code, output = infer(
        int8_bundle, photos, "-o", out, "--decode-memory", 64, "--max-pixels", 5_000_000
    )
    assert code == 0, output
    errors = read_results(errors_path(out))
    assert [Path(e["path"]).name for e in errors] == ["bomb-big.png"]
    assert "too large" in errors[0]["error"]
    assert str(photos / "bomb-ok.png") in {r["path"] for r in read_results(out)}


def test_max_pixels_above_pillows_own_limit_is_one_usage_line(tmp_path, int8_bundle, photos):
    """Pillow refuses over 2 x MAX_IMAGE_PIXELS by itself: say so up front, in m3trt's terms."""
    out = tmp_path / "r.jsonl"
    code, output = infer(int8_bundle, photos, "-o", out, "--max-pixels", 10**12)
    assert code == 2 and "--max-pixels" in output and "MAX_IMAGE_PIXELS" not in output
    assert not out.exists()


# --- 9. small things a hostile user finds --------------------------------------------------------


def test_nothing_annotated_leaves_no_empty_results_file(tmp_path, int8_bundle):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"")
    out = tmp_path / "r.csv"
    code, output = infer(int8_bundle, folder, "-o", out)
    assert code == 1 and "no image could be annotated" in output
    assert not out.exists() and len(read_results(errors_path(out))) == 1
    assert f"(no results, so no {out})" in output and f"-> {out}" not in output  # it said "->"


def test_quiet_after_the_subcommand(tmp_path, int8_bundle, photos):
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(
        main, ["infer", str(int8_bundle), str(photos), "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert len(read_results(out)) == len(good_images(photos))


def test_bench_refuses_an_endless_duration(int8_bundle):
    result = CliRunner().invoke(main, ["bench", str(int8_bundle), "--duration", "inf"])
    assert result.exit_code == 2 and "--duration" in result.output


def test_bench_refuses_an_empty_reference(int8_bundle):
    """``--against ""`` measured the bundle alone and said nothing of the reference."""
    result = CliRunner().invoke(main, ["bench", str(int8_bundle), "--against", ""])
    assert result.exit_code == 2 and "--against" in result.output and "empty" in result.output


def test_data_synth_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path), "--n", "20"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_manifest_and_labels_with_a_bom(tmp_path):
    from m3trt.data.manifest import read_manifest

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    line = json.dumps({"image": "a.png", "labels": ["dog"]})
    (tmp_path / "manifest.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n")
    (tmp_path / "labels.txt").write_bytes(b"\xef\xbb\xbfdog\ncat\n")
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    assert manifest.label_names == ["dog", "cat"] and len(manifest.records) == 1


def test_done_paths_cuts_only_a_torn_line_of_ours(tmp_path):
    from m3trt.runtime.results import ResultWriter, done_paths

    out = tmp_path / "r.jsonl"
    with ResultWriter(out, "jsonl", resume=False, overwrite=False) as writer:
        for name in ("a.jpg", "caf\udce9.jpg"):
            writer.write({"path": name, "labels": ["x"], "scores": [0.5], "k": 1, "quantity": 1.0})
        writer.error("bad\udcff.jpg", "not an image")
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"path": "c.j')  # a kill in the middle of a write
    assert done_paths(out, "jsonl") == {"a.jpg", "caf\udce9.jpg", "bad\udcff.jpg"}
    assert out.read_bytes() == whole
    out.write_bytes(whole + b"hello")  # not the start of one of our lines
    from m3trt.errors import InputError

    with pytest.raises(InputError, match=r"r\.jsonl:3: not a line m3trt wrote"):
        done_paths(out, "jsonl")
    assert out.read_bytes() == whole + b"hello"


def _csv_of_ours(out: Path) -> bytes:
    from m3trt.runtime.results import ResultWriter

    with ResultWriter(out, "csv", resume=False, overwrite=False) as writer:
        writer.write({"path": "a.jpg", "labels": ["x"], "scores": [0.5], "k": 1, "quantity": 1.0})
        writer.write({"path": 'q"uote,d\nname.jpg', "labels": [], "scores": [], "k": 0,
                      "quantity": 0.4})  # fmt: skip
    return out.read_bytes()


@pytest.mark.parametrize(
    "tail",
    [
        b"img/b.jpg,cat|dog,0.91",  # cut in the scores
        b'"name, with a comma',  # cut inside a quoted name
        b"img/b.jpg,cat,0.9|0.8,2,0.7",  # cut in the quantity
        '"caf\u00e9'.encode()[:-1],  # cut inside a UTF-8 character
    ],
)
def test_done_paths_cuts_a_torn_csv_row_of_ours(tmp_path, tail):
    from m3trt.runtime.results import done_paths

    out = tmp_path / "r.csv"
    whole = _csv_of_ours(out)
    out.write_bytes(whole + tail)
    assert done_paths(out, "csv") == {"a.jpg", 'q"uote,d\nname.jpg'}
    assert out.read_bytes() == whole


@pytest.mark.parametrize(
    "tail",
    [
        b'free text, with "quotes" in it',  # an unquoted field holding quotes: not our writer
        b"img/b.jpg,cat,0.9,two",  # k is not a number
        b"img/b.jpg,cat,0.9,1,0.5,not base64!",  # path_bytes
        b"a,b,c,d,e,f,g",  # seven fields
        b'"' + b"x\n" * 100_000,  # a field far longer than any name (was quadratic: minutes)
        b'"a""b,c\r\nnot ours, "x" \r\n',  # an unterminated quoted field at the end
    ],
)
def test_done_paths_keeps_a_csv_tail_that_is_not_ours(tmp_path, tail):
    from m3trt.errors import InputError
    from m3trt.runtime.results import done_paths

    out = tmp_path / "r.csv"
    whole = _csv_of_ours(out)
    out.write_bytes(whole + tail)
    with pytest.raises(InputError, match=r"r\.csv:\d+: not a line m3trt wrote"):
        done_paths(out, "csv")
    assert out.read_bytes() == whole + tail


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno

    from m3trt.errors import OutputFailure
    from m3trt.runtime import results

    writer = results.ResultWriter(tmp_path / "r.jsonl", "jsonl", resume=False, overwrite=False)
    writer.write({"path": "a.jpg", "labels": [], "scores": [], "k": 1, "quantity": 1.0})

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(OutputFailure, match=r"r\.jsonl: cannot write \(no space left"):
        writer.flush()
    monkeypatch.undo()
    writer.close()


def test_overwrite_replaces_a_linked_output_never_its_target(tmp_path, int8_bundle, photos):
    """--overwrite replaces a link at -o (as every atomic output does); it used to open the
    link and truncate the file it pointed at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file\n")
    out = tmp_path / "r.jsonl"
    out.symlink_to(victim)
    code, output = infer(int8_bundle, photos, "-o", out, "--overwrite")
    assert code == 0, output
    assert victim.read_text() == "a user's file\n"
    assert not out.is_symlink() and read_results(out)


def test_read_results_is_as_guarded_as_resume(tmp_path, int8_bundle, photos):
    """The documented reader hung on a FIFO, took a str path as an AttributeError, read a CSV
    named x.out as JSON, and answered a torn last line or a foreign file with raw errors."""
    from m3trt.errors import InputError

    out = tmp_path / "x.out"
    code, output = infer(int8_bundle, photos, "-o", out, "--format", "csv")
    assert code == 0, output
    rows = read_results(str(out), "csv")
    assert len(rows) == len(good_images(photos)) and rows == read_results(out, fmt="csv")
    jsonl = tmp_path / "r.jsonl"
    assert infer(int8_bundle, photos, "-o", jsonl)[0] == 0
    text = jsonl.read_text()
    jsonl.write_text(text + text.splitlines()[0][:20])  # a torn last line: not a row
    assert len(read_results(jsonl)) == len(rows)
    jsonl.write_text(text + "[1, 2]\n")
    with pytest.raises(InputError, match=rf"{jsonl}:{len(rows) + 1}: not a row of m3trt's"):
        read_results(jsonl)
    foreign = tmp_path / "f.csv"
    foreign.write_text("a,b\r\n1,2\r\n")
    with pytest.raises(InputError, match="not m3trt's CSV"):
        read_results(foreign)
    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO"):
        read_results(fifo)


def test_error_lines_escape_what_a_terminal_would_act_on(tmp_path):
    """A manifest naming the image 'b\\nc\\x1b[2J.jpg' printed a two-line error that cleared
    the screen; a non-UTF-8 byte is shown as the byte it is."""
    rows = [{"image": "b\nc\x1b[2J.jpg", "labels": ["x"]}, {"image": "\udcff.jpg", "labels": ["x"]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(main, ["train", str(manifest), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "\x1b" not in result.output
    assert "b\\nc\\x1b[2J.jpg" in result.output and "\\xff.jpg" in result.output


def test_a_report_that_cannot_be_opened_leaves_no_empty_results(
    tmp_path, int8_bundle, photos, monkeypatch
):
    """A full disk at the report's first write left a 0-byte results file (the writer was never
    closed), though a run that annotated nothing leaves none; the line gave no --resume hint."""
    import errno

    from m3trt.runtime import report as report_module

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".r.html.part"))

    monkeypatch.setattr(report_module.ReportWriter, "__init__", full)
    out = tmp_path / "r.jsonl"
    code, output = infer(int8_bundle, photos, "-o", out, "--report", tmp_path / "r.html")
    assert code == 1 and "no space left on the device" in output and "--resume" in output, output
    assert not out.exists()


def test_a_run_that_finds_no_image_says_what_it_passed_over(tmp_path, int8_bundle, photos):
    """JPEGs named IMG_0001, or an --ext that matches nothing, ended in "no image could be
    annotated" with no hint; --ext '*' was taken as the extension '.*'."""
    folder = tmp_path / "camera"
    folder.mkdir()
    shutil.copy(good_images(photos)[0], folder / "IMG_0001")
    (folder / "notes.md").write_text("x")
    summary = tmp_path / "s.json"
    code, output = infer(int8_bundle, folder, "-o", tmp_path / "r.jsonl", "--summary-json", summary)
    assert code == 1, output
    assert "none of the 2 files in PATHS has an image extension (first: " in output
    assert f"{folder / 'IMG_0001'}); --ext names the extensions" in output
    assert json.loads(summary.read_text())["passed_over"] == 2
    code, output = infer(int8_bundle, folder, "-o", tmp_path / "r.jsonl", "--ext", "*")
    assert code == 2 and "no wildcards" in output, output
    code, output = infer(int8_bundle, photos, "-o", tmp_path / "r.jsonl", "--ext", "png")
    assert "passed over" not in output  # images were found: no such line


def test_a_dangling_link_as_an_output_is_called_one(tmp_path, int8_bundle, photos):
    """It was "exists and is not a regular file", of a path that does not exist."""
    link = tmp_path / "r.jsonl"
    link.symlink_to(tmp_path / "gone" / "r.jsonl")
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, output = infer(int8_bundle, photos, "-o", link, *extra)
        assert code == 2 and "the results file is a dangling symbolic link (to " in output, output
    assert not (tmp_path / "gone").exists()
