from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        images: List[str] = typer.Argument(..., help="Image and video files and/or folders of them (videos by "
                                                     "extension: mp4, mov, mkv, webm, avi)."),
        model: str = typer.Option(..., "--model", help="Model folder, hub id or LoRA adapter folder."),
        samples: int = typer.Option(1, help="Samples per image; the score is their mean (needs --temperature > 0)."),
        temperature: float = typer.Option(0.0, help="0 = greedy decoding."),
        top_p: float = typer.Option(1.0, help="Nucleus sampling threshold when sampling."),
        batch_size: int = typer.Option(8, help="Images per forward/generate batch."),
        max_new_tokens: int = typer.Option(256, help="Longest reasoning + answer, in tokens."),
        readout: str = typer.Option("generate", help="generate (reason, then answer) | levels (one forward pass, "
                                                     "level-word probabilities) | expected (reason, then the "
                                                     "expected answer) | both (all three)"),
        out: Optional[Path] = typer.Option(None, help="Append JSON lines here; a re-run skips scored images."),
        recursive: bool = typer.Option(False, help="Look for images in sub-folders too."),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
        dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16"),
        max_pixels: Optional[int] = typer.Option(None, help="Resize images above this many pixels."),
        min_pixels: Optional[int] = typer.Option(None, help="Upscale images below this many pixels."),
        base_model: Optional[str] = typer.Option(None, help="Base model for a LoRA adapter folder."),
        seed: int = typer.Option(0, help="Sampling seed."),
        frames: int = typer.Option(8, help="Frames sampled uniformly from each video; its score is their mean."),
    ) -> None:
        """Score images and videos: reasoning + a 1-5 quality score per image (JSON lines); a video's is the mean of
        --frames frames, kept with their own scores and the worst frames.
        Under accelerate launch / torchrun the images are shared out over the processes (needs --out)."""
        from qponder.errors import QponderError
        from qponder.infer import QualityScorer, current_shard, expand_image_paths, score_files
        from qponder.video import find_videos, is_video, score_videos

        named = expand_image_paths(images, recursive=recursive)
        paths = [p for p in named if not is_video(p)]
        videos = list(dict.fromkeys([p for p in named if is_video(p)] + find_videos(images, recursive=recursive)))
        if not paths and not videos:
            raise QponderError("no images or videos found in " + ", ".join(images))
        if frames < 1:
            raise QponderError(f"--frames must be >= 1, got {frames}")
        if samples > 1 and temperature <= 0:
            raise QponderError("--samples > 1 needs --temperature > 0 (greedy samples would all be identical)")
        shard = current_shard()
        if shard.world > 1 and out is None:
            raise QponderError(f"scoring over {shard.world} processes needs --out (each writes its share beside it, "
                               "merged into it at the end)")
        if shard.world > 1 and videos:
            raise QponderError(f"videos are scored in one process, not shared out over {shard.world}; score "
                               f"{videos[0]} and the other videos without accelerate launch / torchrun")
        scorer = QualityScorer(model, device=shard.device(device), dtype=dtype, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                               base_model=base_model, min_pixels=min_pixels, max_pixels=max_pixels)

        def show(rec: dict) -> None:
            if out is None:
                typer.echo(json.dumps(rec, ensure_ascii=False))

        def report(what: str, stats) -> None:
            typer.echo(f"scored {stats.scored} {what}, {stats.skipped_done} already done, "
                       f"{stats.unreadable} unreadable, {stats.unparsable} without a parsable score"
                       + (f" -> {out}" if out else ""), err=True)

        common = dict(out_path=str(out) if out else None, samples=samples, readout=readout, min_pixels=min_pixels,
                      max_pixels=max_pixels, on_result=show)
        if paths:
            stats = score_files(scorer, paths, shard=shard, **common)
            if not shard.main:
                return  # rank 0 reports the totals
            report("image(s)", stats)
        if videos:
            report("video(s)", score_videos(scorer, videos, frames=frames, **common))
