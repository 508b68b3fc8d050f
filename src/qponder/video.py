"""Scoring videos with the image scorer: N frames sampled uniformly in time, scored as a batch, the mean reported.

A video's score is the mean of its frames' scores (what VQA work on frame-level IQA models does first); the per-frame
scores, with each frame's index and timestamp, and the lowest-scoring frames are kept in the record, because a clip
that is sharp except for two blurred seconds should say where those seconds are.

Decoding is PyAV's (FFmpeg libraries inside its wheel). Frame ``i`` of ``N`` is the frame shown at the centre of the
``i``-th of N equal slices of the clip, found from the packet timestamps (a demux pass, no decoding), then one decode
pass keeps only those frames. Frames go through the images' own pixel budget (``qponder.data.prepare_image``), so a
frame and a still of the same size reach the model identically. Records carry the key ``video`` (not ``image``), so
image resume and shard merging in ``qponder.infer`` pass over them, and an ``--out`` file can hold both.
"""

from __future__ import annotations

import bisect
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from qponder.errors import QponderError
from qponder.infer import (
    QualityScorer,
    ScoreResult,
    ScoreRunStats,
    files_in_folder,
    mean_and_std,
    score_settings,
    written_with,
)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
DEFAULT_FRAMES = 8
WORST_FRAMES = 3


class VideoTooLarge(QponderError):
    """A frame above the caller's pixel limit (the server answers 413 rather than 400)."""


@dataclass
class VideoFrame:
    index: int  # position of the frame in the stream, in presentation order
    time: float  # seconds from the first frame
    image: Any  # RGB PIL image inside the pixel budget


@dataclass
class Video:
    frames: list[VideoFrame]
    duration: float  # seconds, first frame's start to last frame's end
    frame_count: int


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def find_videos(inputs: Sequence[str], recursive: bool = False) -> list[str]:
    """Video files in the folders among ``inputs`` (sorted); files named directly are the caller's to sort out."""
    folders = (Path(item).expanduser() for item in inputs)
    return [f for p in folders if p.is_dir() for f in files_in_folder(p, VIDEO_EXTENSIONS, recursive)]


def sample_indices(pts: Sequence[int], end: int, count: int) -> list[int]:
    """Indices into the sorted ``pts`` of the frames shown at the centres of ``count`` equal slices of
    [pts[0], end); repeats removed (a clip with fewer frames than asked gives each frame once)."""
    start = pts[0]
    picks = []
    for i in range(count):
        target = start + Fraction((2 * i + 1) * (end - start), 2 * count)
        picks.append(max(0, bisect.bisect_right(pts, target) - 1))
    return list(dict.fromkeys(picks))


def read_frames(src: str | os.PathLike | BinaryIO, count: int = DEFAULT_FRAMES, *, min_pixels: int | None = None,
                max_pixels: int | None = None, max_frame_pixels: int | None = None, name: str | None = None) -> Video:
    """``count`` frames sampled uniformly in time from a video file or binary file object, each an RGB image
    inside ``[min_pixels, max_pixels]``. Raises QponderError naming the file when it is not a readable video, and
    VideoTooLarge when a frame has more than ``max_frame_pixels`` pixels (checked before it is converted)."""
    import av

    from qponder.data import prepare_image

    name = name or (getattr(src, "name", "<video bytes>") if hasattr(src, "read") else str(src))
    if count < 1:
        raise QponderError(f"frames must be >= 1, got {count}")

    def open_video():
        if hasattr(src, "read"):
            src.seek(0)
            return av.open(src, mode="r")
        return av.open(str(src), mode="r")

    def check_size(width: int, height: int) -> None:
        if max_frame_pixels is not None and width * height > max_frame_pixels:
            raise VideoTooLarge(f"{name}: the video's frames are {width}x{height} = {width * height} pixels; at "
                                f"most {max_frame_pixels} are accepted")

    try:
        with open_video() as container:
            if not container.streams.video:
                raise QponderError(f"{name}: no video stream")
            stream = container.streams.video[0]
            check_size(stream.codec_context.width, stream.codec_context.height)
            stamps = []  # (pts, duration) of every packet that carries a frame
            for packet in container.demux(stream):
                t = packet.pts if packet.pts is not None else packet.dts
                if t is not None and packet.size > 0:
                    stamps.append((t, packet.duration or 0))
        if not stamps:
            raise QponderError(f"{name}: the video has no frames")
        stamps.sort()
        pts = [t for t, _ in stamps]
        last_duration = stamps[-1][1] or ((pts[-1] - pts[0]) // (len(pts) - 1) if len(pts) > 1 else 1)
        end = pts[-1] + last_duration
        wanted = {pts[i]: i for i in sample_indices(pts, end, count)}
        picked: dict[int, VideoFrame] = {}
        with open_video() as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            for k, frame in enumerate(container.decode(stream)):
                t = frame.pts if frame.pts is not None else (pts[k] if k < len(pts) else None)
                if t in wanted and t not in picked:
                    check_size(frame.width, frame.height)
                    image = prepare_image(frame.to_image(), min_pixels=min_pixels, max_pixels=max_pixels)
                    picked[t] = VideoFrame(index=wanted[t], time=round(float((t - pts[0]) * tb), 6), image=image)
                    if len(picked) == len(wanted):
                        break
    except QponderError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, ZeroDivisionError) as e:
        raise QponderError(f"{name}: cannot read video ({type(e).__name__}: {e})") from None
    if len(picked) < len(wanted):
        raise QponderError(f"{name}: {len(wanted) - len(picked)} of the {len(wanted)} sampled frames could not be "
                           "decoded (corrupt or truncated video)")
    return Video(frames=sorted(picked.values(), key=lambda f: f.index), frame_count=len(pts),
                 duration=round(float((end - pts[0]) * tb), 6))


def frame_name(video: str, frame: VideoFrame) -> str:
    """The name a frame is scored under: it seeds sampling, so it must be stable across runs."""
    return f"{video}#t={frame.time:.3f}"


def video_record(name: str, video: Video, results: Sequence[ScoreResult], readout: str,
                 worst: int = WORST_FRAMES) -> dict:
    """One record for a scored video: the frames' mean score and spread, every frame's result, the worst frames.

    Unparsable frames (score None) count in neither the mean nor the ranking, as unparsable samples of an image."""
    frames = []
    for f, r in zip(video.frames, results, strict=True):
        d = r.to_dict()
        del d["image"], d["readout"]
        frames.append({"index": f.index, "time": f.time, **d})
    score, std = mean_and_std([r.score for r in results])
    ranked = sorted((f for f in frames if f["score"] is not None), key=lambda f: (f["score"], f["index"]))
    return {"video": name, "score": score, "std": std,
            "levels_score": mean_and_std([r.levels_score for r in results])[0],
            "expected_score": mean_and_std([r.expected_score for r in results])[0], "readout": readout,
            "frames": frames, "worst_frames": [{k: f[k] for k in ("index", "time", "score")} for f in ranked[:worst]],
            "duration": video.duration, "frame_count": video.frame_count}


def score_video(scorer: QualityScorer, video: Video, name: str, *, samples: int = 1, readout: str = "generate",
                temperature: float | None = None) -> dict:
    """Score a decoded video's frames in the scorer's batch size and build its record."""
    results: list[ScoreResult] = []
    bs = scorer.batch_size
    for i in range(0, len(video.frames), bs):
        chunk = video.frames[i:i + bs]
        results += scorer.score_batch([f.image for f in chunk], [frame_name(name, f) for f in chunk],
                                      samples=samples, readout=readout, temperature=temperature)
    return video_record(name, video, results, readout)


def score_videos(scorer: QualityScorer, paths: Sequence[str], *, out_path: str | None = None, frames: int =
                 DEFAULT_FRAMES, samples: int = 1, readout: str = "generate", temperature: float | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None, progress: bool = True,
                 on_result: Callable[[dict], None] | None = None) -> ScoreRunStats:
    """Score video files one by one, appending one record per video to ``out_path``; resumable like
    ``qponder.infer.score_files`` (by name, refusing a file written with other settings, ``frames`` included).
    An unreadable video is reported on stderr, counted and skipped."""
    from tqdm import tqdm

    from qponder.io import append_jsonl, read_jsonl

    settings, settings_id = score_settings(scorer, samples=samples, readout=readout, temperature=temperature,
                                           frames=frames, min_pixels=min_pixels, max_pixels=max_pixels)
    done: set[str] = set()
    if out_path and Path(out_path).exists():
        for r in read_jsonl(out_path):
            if isinstance(r, dict) and "video" in r:
                if not written_with(r, settings, settings_id):
                    raise QponderError(f"{out_path}: already holds video scores made with other settings (model "
                                       f"{r.get('model')!r}, {len(r.get('frames') or [])} frames); resuming would mix "
                                       "them. Use another output or delete it.")
                done.add(r["video"])
    names = [str(Path(p).resolve()) for p in paths]
    stats = ScoreRunStats(skipped_done=sum(1 for n in names if n in done))
    todo = [(p, n) for p, n in zip(paths, names) if n not in done]
    for path, name in tqdm(todo, desc="scoring videos", unit="video", disable=not progress):
        try:
            video = read_frames(path, frames, min_pixels=min_pixels, max_pixels=max_pixels)
        except QponderError as e:
            tqdm.write(f"skipped unreadable video: {e}", file=sys.stderr)
            stats.unreadable += 1
            continue
        rec = score_video(scorer, video, name, samples=samples, readout=readout, temperature=temperature)
        rec.update(model=settings["model"], backend=settings["backend"], settings_id=settings_id)
        if out_path:
            append_jsonl(out_path, rec)
        if on_result is not None:
            on_result(rec)
        stats.scored += 1
        stats.unparsable += int(rec["score"] is None)
    return stats
