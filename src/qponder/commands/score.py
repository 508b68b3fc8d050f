from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        images: List[str] = typer.Argument(..., help="Image files and/or folders of images."),
        model: str = typer.Option(..., "--model", help="Model folder, hub id or LoRA adapter folder."),
        samples: int = typer.Option(1, help="Samples per image; the score is their mean (needs --temperature > 0)."),
        temperature: float = typer.Option(0.0, help="0 = greedy decoding."),
        top_p: float = typer.Option(1.0, help="Nucleus sampling threshold when sampling."),
        batch_size: int = typer.Option(8, help="Images per forward/generate batch."),
        max_new_tokens: int = typer.Option(256, help="Longest reasoning + answer, in tokens."),
        readout: str = typer.Option("generate", help="generate (reason, then answer) | levels (one forward pass, "
                                                     "level-word probabilities) | both"),
        out: Optional[Path] = typer.Option(None, help="Append JSON lines here; a re-run skips scored images."),
        recursive: bool = typer.Option(False, help="Look for images in sub-folders too."),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
        dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16"),
        max_pixels: Optional[int] = typer.Option(None, help="Resize images above this many pixels."),
        min_pixels: Optional[int] = typer.Option(None, help="Upscale images below this many pixels."),
        base_model: Optional[str] = typer.Option(None, help="Base model for a LoRA adapter folder."),
        seed: int = typer.Option(0, help="Sampling seed."),
    ) -> None:
        """Score images: reasoning + a 1-5 quality score per image (JSON lines).
        Under accelerate launch / torchrun the images are shared out over the processes (needs --out)."""
        from qponder.errors import QponderError
        from qponder.infer import QualityScorer, current_shard, expand_image_paths, score_files

        paths = expand_image_paths(images, recursive=recursive)
        if not paths:
            raise QponderError("no images found in " + ", ".join(images))
        if samples > 1 and temperature <= 0:
            raise QponderError("--samples > 1 needs --temperature > 0 (greedy samples would all be identical)")
        shard = current_shard()
        if shard.world > 1 and out is None:
            raise QponderError(f"scoring over {shard.world} processes needs --out (each writes its share beside it, "
                               "merged into it at the end)")
        scorer = QualityScorer(model, device=shard.device(device), dtype=dtype, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                               base_model=base_model, min_pixels=min_pixels, max_pixels=max_pixels)

        def show(rec: dict) -> None:
            if out is None:
                typer.echo(json.dumps(rec, ensure_ascii=False))

        stats = score_files(scorer, paths, out_path=str(out) if out else None, samples=samples, readout=readout,
                            min_pixels=min_pixels, max_pixels=max_pixels, on_result=show, shard=shard)
        if not shard.main:
            return  # rank 0 reports the totals
        typer.echo(f"scored {stats.scored} image(s), {stats.skipped_done} already done, "
                   f"{stats.unreadable} unreadable, {stats.unparsable} without a parsable score"
                   + (f" -> {out}" if out else ""), err=True)
