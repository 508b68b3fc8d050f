"""Video scoring (qponder.video, `qponder score` on videos, `/v1/score` with a video) on a clip each test run makes
with PyAV: 2 s at 8 fps, 112x112, a moving sharp pattern whose second half is heavily blurred. The tiny model is
untrained, so its scores are noise: the tests check the plumbing exactly (which frames, at which times, the mean,
the worst frames) and that the sharp and blurred halves reach the model as different inputs."""

from __future__ import annotations

import io
import json
import signal

import av
import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from qponder.cli import main as cli_main
from qponder.errors import QponderError
from qponder.infer import QualityScorer
from qponder.serve.process import ServerProcess
from qponder.video import VideoTooLarge, find_videos, read_frames, sample_indices, score_video

FPS, SECONDS, SIZE = 8, 2, 112
SAMPLED = [1, 3, 5, 7, 9, 11, 13, 15]  # the frames at the centres of 8 equal slices of 16 frames
SHARP, BLURRED = SAMPLED[:4], SAMPLED[4:]


def make_clip(path, codec: str = "libx264") -> None:
    """A diagonal colour checkerboard moving 3 px a frame; frames 8-15 Gaussian-blurred (radius 4)."""
    n = FPS * SECONDS
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for k in range(n):
            a = ((((xx + 3 * k) // 8) + yy // 8) % 2 * 255).astype(np.uint8)
            img = Image.fromarray(np.stack([a, a // 2 + 64, 255 - a], -1))
            if k >= n // 2:
                img = img.filter(ImageFilter.GaussianBlur(4))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    make_clip(path)
    return path


def test_frames_are_sampled_uniformly_and_the_blurred_half_differs(clip):
    from qponder.demo.rule_teacher import measure

    video = read_frames(clip, 8)
    assert video.frame_count == 16 and video.duration == pytest.approx(2.0)
    assert [f.index for f in video.frames] == SAMPLED
    assert [f.time for f in video.frames] == pytest.approx([i / FPS for i in SAMPLED])
    assert all(f.image.mode == "RGB" and f.image.size == (SIZE, SIZE) for f in video.frames)
    var = {f.index: float(np.asarray(f.image, dtype=np.float32).var()) for f in video.frames}
    assert min(var[i] for i in SHARP) > 20 * max(var[i] for i in BLURRED), var
    blur = {f.index: measure(f.image).blur for f in video.frames}  # the rule teacher's re-blur ratio
    assert min(blur[i] for i in BLURRED) > max(blur[i] for i in SHARP) + 0.2, blur


@pytest.mark.parametrize("ext,codec", [("webm", "libvpx-vp9"), ("avi", "mpeg4"), ("mkv", "libx264"),
                                       ("mov", "libx264")])
def test_other_containers_give_the_same_frames(tmp_path, ext, codec):
    path = tmp_path / f"clip.{ext}"
    make_clip(path, codec)
    video = read_frames(open(path, "rb"), 8)  # a file object, as the server passes
    assert [f.index for f in video.frames] == SAMPLED
    assert [f.time for f in video.frames] == pytest.approx([i / FPS for i in SAMPLED])


def test_pixel_budget_fewer_frames_than_asked_and_limits(clip):
    small = read_frames(clip, 3, max_pixels=5000)
    assert [f.index for f in small.frames] == [2, 8, 13]  # centres at 1/3, 1 and 5/3 s
    assert all(f.image.size == (70, 70) for f in small.frames)  # as qponder.data.fit_pixels(112, 112, None, 5000)
    assert [f.index for f in read_frames(clip, 40).frames] == list(range(16))  # each frame once
    assert sample_indices([0, 10, 20], 30, 6) == [0, 1, 2]
    with pytest.raises(VideoTooLarge, match="112x112"):
        read_frames(clip, 8, max_frame_pixels=SIZE * SIZE - 1)


def test_unreadable_videos_are_named(tmp_path, clip):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "cut.mp4").write_bytes(clip.read_bytes()[:3000])
    for name in ("notes.mp4", "cut.mp4", "missing.mp4"):
        with pytest.raises(QponderError, match=name):
            read_frames(tmp_path / name)
    with pytest.raises(QponderError, match="frames must be >= 1"):
        read_frames(clip, 0)


def _check_record(rec: dict) -> None:
    """Eight frames at the sampled times, the mean of their scores, the three lowest as the worst frames."""
    frames = rec["frames"]
    assert [f["index"] for f in frames] == SAMPLED
    assert [f["time"] for f in frames] == pytest.approx([i / FPS for i in SAMPLED])
    scores = [f["score"] for f in frames]
    assert all(isinstance(s, float) and 1 <= s <= 5 for s in scores)
    assert rec["score"] == pytest.approx(sum(scores) / len(scores))
    lowest = sorted(frames, key=lambda f: (f["score"], f["index"]))[:3]
    assert rec["worst_frames"] == [{k: f[k] for k in ("index", "time", "score")} for f in lowest]
    assert max(w["score"] for w in rec["worst_frames"]) <= min(
        f["score"] for f in frames if f["index"] not in {w["index"] for w in rec["worst_frames"]})


def test_score_video_with_the_tiny_model(tiny_model_dir, clip):
    scorer = QualityScorer(str(tiny_model_dir), device="cpu", batch_size=3)  # 8 frames in batches of 3, 3, 2
    rec = score_video(scorer, read_frames(clip, 8), "clip", readout="levels")
    _check_record(rec)
    assert rec["video"] == "clip" and rec["levels_score"] == pytest.approx(rec["score"])
    assert len({f["score"] for f in rec["frames"]}) > 1  # the frames are scored apart


def test_score_command_takes_videos_from_a_folder(tiny_model_dir, tmp_path, clip, capsys):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "broken.webm").write_bytes(b"\x1aE\xdf\xa3 not really matroska")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "still.png")
    (folder / "notes.txt").write_text("x")
    assert [p.rsplit("/", 1)[-1] for p in find_videos([str(folder)])] == ["broken.webm", "clip.mp4"]
    out = tmp_path / "scores.jsonl"
    args = ["score", str(folder), "--model", str(tiny_model_dir), "--readout", "levels", "--out", str(out)]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable video" in err and "broken.webm" in err
    assert "scored 1 image(s), 0 already done, 0 unreadable" in err
    assert "scored 1 video(s), 0 already done, 1 unreadable" in err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    (img,) = [r for r in recs if "image" in r]
    (vid,) = [r for r in recs if "video" in r]
    assert img["image"].endswith("still.png") and vid["video"] == str((folder / "clip.mp4").resolve())
    _check_record(vid)
    first = out.read_text()
    assert cli_main(args) == 0  # resume: both kinds already done, the file unchanged
    err = capsys.readouterr().err
    assert "scored 0 image(s), 1 already done" in err and "scored 0 video(s), 1 already done" in err
    assert out.read_text() == first
    assert cli_main(args + ["--frames", "4"]) == 2  # other frames, same file: refused, not mixed
    assert "other settings" in capsys.readouterr().err


API_KEY = "video-test-key"
MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def http(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-video") / "server.log"
    srv = ServerProcess(tiny_model_dir, "--api-key-env", "QPONDER_VIDEO_KEY", "--max-batch", "8",
                        "--batch-window-ms", "20", "--max-image-bytes", str(MAX_BYTES), "--max-image-pixels",
                        "1000000", "--max-new-tokens", "8", "--threads", "1", env={"QPONDER_VIDEO_KEY": API_KEY},
                        log_path=log)
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c
    assert srv.stop(signal.SIGINT) == 0, srv.log_text()[-2000:]
    assert "Traceback" not in srv.log_text(), srv.log_text()[-4000:]


def test_http_score_with_a_video(http, clip):
    data = clip.read_bytes()
    r = http.post("/v1/score", files={"video": ("clip.mp4", data, "video/mp4")},
                  data={"readout": "levels", "frames": "8"})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_record(body)
    assert body["duration"] == pytest.approx(2.0) and body["frame_count"] == 16 and "video" not in body
    stats = http.get("/health").json()["stats"]
    assert stats["max_batch_size_seen"] > 1  # the frames were queued together and shared batches
    r = http.post("/v1/score", files={"video": ("clip.mp4", data, "video/mp4")}, data={"readout": "levels",
                                                                                      "frames": "3"})
    assert [f["index"] for f in r.json()["frames"]] == [2, 8, 13]
    for files, form, status, code in [
        ({"video": ("x.mp4", b"garbage bytes", "video/mp4")}, {}, 400, "invalid_video"),
        ({"video": ("x.mp4", io.BytesIO(b"\0" * (MAX_BYTES + 1)), "video/mp4")}, {}, 413, "video_too_large"),
        ({"video": ("clip.mp4", data, "video/mp4")}, {"frames": "0"}, 400, "invalid_value"),
    ]:
        r = http.post("/v1/score", files=files, data=form)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
