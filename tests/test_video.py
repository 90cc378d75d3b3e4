"""Videos as a user meets them: a folder of photos and short clips (one recorded on a phone held
upright, so stored turned with a rotation flag), next to broken, truncated, audio-only and too-long
files, indexed offline with the bundled models. Then `segsearch search "red circle" --json` (no
model flags: the library remembers) finds the circle's track with its time span, the server lists
the video's tracks, renders the track as a clip with its mask, and filters photos from videos; a
rerun does nothing; SIGKILL in the middle of a video, then a rerun, equals a clean run."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from segsearch.eval.shapes import DEMO_SEEDS, make_scene
from segsearch.eval.videos import scripted_video, write_mp4
from segsearch.settings import Settings

from segsearch.api.app import create_app
from segsearch.cli.app import app as cli

STEP = 0.5  # the default --video-fps 2
TIMES = [k * STEP for k in range(16)]
STREET = [  # a red circle crossing the frame in 4 s (its masks never overlap between samples)
    ("red", "circle", 1.0, 5.0, (-0.1, 0.35), (1.1, 0.45)),
    ("blue", "square", 0.0, 8.0, (0.3, 0.75), (0.6, 0.7)),
]
PHONE = [("green", "triangle", 0.5, 6.0, (0.7, 0.3), (0.4, 0.4)), ("yellow", "star", 3.0, 8.0, (0.2, 0.7), (0.3, 0.6))]


def audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    lib = root / "library"
    (lib / "trip").mkdir(parents=True)
    street, phone = scripted_video(STREET, seed=1), scripted_video(PHONE, seed=2)
    write_mp4(street, lib / "trip" / "street.mp4")
    write_mp4(phone, lib / "trip" / "phone.mov", rotation=90)
    for i in range(2):
        from PIL import Image

        Image.fromarray(make_scene(DEMO_SEEDS[i]).image).save(lib / "trip" / f"photo{i}.jpg")
    bad = lib / "bad"
    bad.mkdir()
    (bad / "corrupt.mp4").write_bytes(os.urandom(50_000))
    whole = (lib / "trip" / "street.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(whole[: len(whole) * 6 // 10])
    audio_only(bad / "voice-memo.m4v")
    write_mp4(scripted_video([("white", "ring", 0, 20, (0.5, 0.5), (0.5, 0.5))], duration_s=20), bad / "long.mkv")

    env = {"SEGSEARCH_MAX_VIDEO_SECONDS": "15"}
    data = ["--data", str(root / "data")]
    runner = CliRunner()
    r = runner.invoke(
        cli, ["index", str(lib), *data, "--sam", "sam-shapes-tiny", "--clip", "clip-shapes-tiny", "--json"], env=env
    )
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    again = runner.invoke(cli, ["index", str(lib), *data, "--json"], env=env)  # no model flags
    assert again.exit_code == 0, again.output
    return root, data, first, json.loads(again.stdout), street, phone


def test_a_folder_of_photos_and_videos_indexes_and_bad_videos_fail_alone(world):
    _root, _data, first, again, *_ = world
    assert first["indexed"] == 4 and first["failed"] == 4, first
    reasons = {Path(f["path"]).name: f["error"] for f in first["failures"]}
    assert "not a readable video" in reasons["corrupt.mp4"]
    assert "not a readable video" in reasons["truncated.mp4"] or "truncated" in reasons["truncated.mp4"]
    assert reasons["voice-memo.m4v"] == "the file has no video stream"
    assert "above the cap of 15 s" in reasons["long.mkv"] and "SEGSEARCH_MAX_VIDEO_SECONDS" in reasons["long.mkv"]
    # the rerun redoes nothing that worked (failed files are tried again, and fail again)
    assert again["indexed"] == 0 and again["skipped"] == 4 and again["failed"] == 4, again


def test_search_red_circle_finds_its_track_and_time_span(world):
    _root, data, _first, _again, street, _phone = world
    r = CliRunner().invoke(cli, ["search", "red circle", *data, "--kind", "track", "--json", "--top-k", "3"])
    assert r.exit_code == 0, r.output
    top = json.loads(r.stdout)[0]
    assert top["kind"] == "track" and top["image_path"].endswith("street.mp4")
    gt = next(g for g in street.truth(TIMES) if g["label"] == ("red", "circle"))
    assert abs(top["start_s"] - gt["start_s"]) <= STEP and abs(top["end_s"] - gt["end_s"]) <= STEP, (top, gt)
    assert top["start_s"] <= top["best_s"] <= top["end_s"]
    # its box is the circle's at the best frame
    m = gt["masks"].get(top["best_s"]) if top["best_s"] in gt["masks"] else street.render(top["best_s"])[1][0]
    ys, xs = np.nonzero(m)
    x, y, w, h = top["bbox"]
    assert abs(x - xs.min()) <= 4 and abs(y - ys.min()) <= 4 and abs(x + w - 1 - xs.max()) <= 4
    # among videos (tracks and keyframes) too, and the human output says when
    r = CliRunner().invoke(cli, ["search", "red circle", *data, "--media", "video", "--top-k", "3"])
    line = r.stdout.splitlines()[0]
    assert r.exit_code == 0 and "track" in line and "street.mp4" in line, r.stdout
    assert f"0:{top['start_s']:04.1f}-0:{top['end_s']:04.1f}" in line


def test_server_lists_tracks_renders_clip_and_filters_media(world):
    root, *_rest, phone = world
    with TestClient(base_url="http://127.0.0.1", app=create_app(Settings(data=root / "data"))) as c:
        hits = c.post("/v1/search", json={"text": "green triangle", "top_k": 1, "filters": {"kind": "track"}}).json()
        hit = hits["hits"][0]
        assert hit["image_path"].endswith("phone.mov")
        # the phone video is upright: the track's box matches the upright ground truth
        gt = next(g for g in phone.truth(TIMES) if g["label"] == ("green", "triangle"))
        ys, xs = np.nonzero(gt["masks"][hit["best_s"]])
        assert abs(hit["bbox"][0] - xs.min()) <= 4 and abs(hit["bbox"][1] - ys.min()) <= 4

        video = c.get(hit["urls"]["image"]).json()
        assert video["width"] == 320 and video["height"] == 240 and video["duration_s"] == pytest.approx(8.0)
        track = next(t for t in video["tracks"] if t["segment_id"] == hit["segment_id"])
        assert [f["t"] for f in track["frames"]][0] == track["start_s"] and len(track["frames"]) >= 8
        assert len(video["keyframes"]) == 4  # every 2 s

        clip = c.get(hit["urls"]["clip"])
        assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4"
        with av.open(io.BytesIO(clip.content)) as f:
            s = f.streams.video[0]
            frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(s)]
            assert s.codec_context.name == "h264"
        span = hit["end_s"] - hit["start_s"]
        assert abs(len(frames) / 10 - span) <= 1.0  # 10 frames/s over the track's span
        assert c.get(hit["urls"]["crop"]).status_code == 200
        assert c.get(hit["urls"]["overlay"]).headers["content-type"] == "image/jpeg"

        photos = c.post("/v1/search", json={"text": "green triangle", "top_k": 20, "filters": {"media": "photo"}})
        assert {h["kind"] for h in photos.json()["hits"]} <= {"object", "image"}
        videos = c.post("/v1/search", json={"text": "green triangle", "top_k": 20, "filters": {"media": "video"}})
        assert {h["kind"] for h in videos.json()["hits"]} <= {"track", "frame"}
        assert c.get(f"/v1/videos/{photos.json()['hits'][0]['image_id']}").status_code == 404  # a photo
        frame = [h for h in videos.json()["hits"] if h["kind"] == "frame"][0]
        assert c.get(frame["urls"]["clip"] or "/v1/segments/x/clip.mp4").status_code == 404


def test_sigkill_mid_video_then_rerun_equals_clean_run(world, tmp_path):
    root = world[0]
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "street.mp4").write_bytes((root / "library" / "trip" / "street.mp4").read_bytes())
    # one frame a second: the kill still lands mid-video (8 SAM runs), the test costs half as much
    cmd = [sys.executable, "-m", "segsearch", "index", str(lib), "--video-fps", "1"]
    cmd += ["--sam", "sam-shapes-tiny", "--clip", "clip-shapes-tiny"]

    def state(data):
        con = sqlite3.connect(data / "segsearch.db")
        try:
            return (
                sorted(con.execute("select id, status from images")),
                sorted(con.execute("select id, kind, start_s, end_s from segments")),
                con.execute("select count(*) from track_frames").fetchone(),
            )
        finally:
            con.close()

    clean = tmp_path / "clean"
    assert subprocess.run([*cmd, "--data", str(clean)], capture_output=True, timeout=300).returncode == 0
    killed = tmp_path / "killed"
    p = subprocess.Popen([*cmd, "--data", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once the first video is being worked on
        time.sleep(0.2)
        try:
            if (killed / "segsearch.db").exists() and "pending" in str(state(killed)[0]):
                break
        except sqlite3.OperationalError:  # the file exists before its schema does
            continue
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert "pending" in str(state(killed)[0])  # it died mid-video
    assert subprocess.run([*cmd[:4], str(lib), "--data", str(killed)], capture_output=True, timeout=300).returncode == 0
    assert state(killed) == state(clean)
    doctor = subprocess.run(
        [sys.executable, "-m", "segsearch", "doctor", "--data", str(killed), "--json"], capture_output=True, text=True
    )
    assert doctor.returncode == 0 and json.loads(doctor.stdout)["found"]["total"] == 0, doctor.stdout


def _encode(path: Path, codec: str, pix_fmt: str, times: list[float], fmt: str | None = None) -> list[np.ndarray]:
    """A clip whose frame k is one flat colour, presented at times[k]; returns the colours."""
    import fractions

    colours = [np.array([(37 * k) % 256, 255 - (37 * k) % 256, 128], np.uint8) for k in range(len(times))]
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = 160, 120, pix_fmt
        s.codec_context.time_base = fractions.Fraction(1, 1000)
        for t, c in zip(times, colours):
            f = av.VideoFrame.from_ndarray(np.broadcast_to(c, (120, 160, 3)).copy(), format="rgb24")
            f.pts, f.time_base = int(round(t * 1000)), fractions.Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return colours


@pytest.mark.parametrize(
    "name,codec,pix_fmt",
    [
        ("h264.mp4", "libx264", "yuv420p"),
        ("vp9.webm", "libvpx-vp9", "yuv420p"),
        ("mpeg4.avi", "mpeg4", "yuv420p"),
        ("hevc-10bit.mkv", "hevc", "yuv420p10le"),
    ],
)
def test_sampling_takes_the_frame_on_screen_whatever_the_codec_or_frame_rate(tmp_path, name, codec, pix_fmt):
    from segsearch.video import frame_at, probe, sample_frames

    # variable frame rate: gaps, bursts, a frame held for 1.2 s
    times = [0.0, 0.1, 0.35, 0.4, 1.6, 1.7, 1.9, 2.6, 2.62, 3.1, 3.4]
    colours = _encode(tmp_path / name, codec, pix_fmt, times, fmt="matroska" if name.endswith(".mkv") else None)
    info = probe(tmp_path / name)
    assert (info.width, info.height) == (160, 120)
    got = [(f.t, f.rgb[60, 80].astype(int)) for f in sample_frames(tmp_path / name, 2.0)]
    # on screen at 0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0: frames 0, 3, (3 again: skipped), (3), 6, (6), 8
    assert [t for t, _ in got][:4] == [0.0, 0.4, 1.9, 2.62]
    for (t, rgb), k in zip(got, (0, 3, 6, 8)):
        assert np.abs(rgb - colours[k]).max() <= 12, (name, t, rgb, colours[k])
    assert np.abs(frame_at(tmp_path / name, 1.2)[60, 80].astype(int) - colours[3]).max() <= 12  # still the 0.4 s frame


def test_a_4k_phone_video_is_sampled_at_the_size_sam_sees(tmp_path):
    """A 4K clip recorded upright on a phone (stored 3840x2160 turned, with a rotation flag): frames
    come out upright and at most 1024 px, so memory per frame does not follow the video's pixels."""
    from segsearch.video import probe, sample_frames

    clip = scripted_video([("red", "square", 0.0, 2.0, (0.3, 0.3), (0.3, 0.3))], width=2160, height=3840, fps=4)
    clip.duration_s = 1.0
    write_mp4(clip, tmp_path / "uhd.mov", rotation=90)
    info = probe(tmp_path / "uhd.mov")
    assert (info.width, info.height, info.rotation) == (576, 1024, 90)
    frames = list(sample_frames(tmp_path / "uhd.mov", 2.0))
    assert [f.rgb.shape for f in frames] == [(1024, 576, 3)] * 2
    # upright: the red square is in the upper left third, as drawn
    red = (frames[0].rgb[:, :, 0] > 180) & (frames[0].rgb[:, :, 1] < 80)
    ys, xs = np.nonzero(red)
    assert abs(ys.mean() / 1024 - 0.3) < 0.05 and abs(xs.mean() / 576 - 0.3) < 0.05
    # a frame size over the cap (the library's max_image_pixels) is refused from the header, before
    # a frame is decoded
    import segsearch.video as video

    with pytest.raises(video.VideoError, match="3840x2160 = 8,294,400 pixels, above the cap"):
        probe(tmp_path / "uhd.mov", max_pixels=4_000_000)
