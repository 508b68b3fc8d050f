"""vLLM generation backend for evaluation: the same prompts, parsing and result records as ``qponder.infer``.

Imported only when asked for (``--backend vllm``, or ``auto`` with vLLM installed and a GPU present). The prompt
text is rendered by the checkpoint's own processor chat template, exactly as the HF path renders it, and vLLM
receives the image as multi-modal data. The level read-out needs full next-token logits and stays on the HF path.
``tensor_parallel_size`` goes to ``vllm.LLM`` as it is (one model over that many GPUs, in one qponder process).
"""

from __future__ import annotations

import zlib
from typing import Optional

from qponder.errors import QponderError
from qponder.infer import ScoreResult, mean_and_std, pick_reasoning
from qponder.prompts import STUDENT_PROMPT


class VLLMScorer:
    def __init__(self, model_path: str, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 batch_size: int = 64, seed: int = 0, min_pixels: Optional[int] = None,
                 max_pixels: Optional[int] = None, gpu_memory_utilization: float = 0.85,
                 prompt: str = STUDENT_PROMPT, tensor_parallel_size: int = 1, dtype: str = "auto"):
        try:
            from vllm import LLM
        except ImportError as e:
            raise QponderError("the vLLM backend needs vllm: pip install 'qponder[vllm]' on a GPU machine") from e
        from qponder.models import load_processor

        mm_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        self.llm = LLM(model=model_path, limit_mm_per_prompt={"image": 1}, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, mm_processor_kwargs=mm_kwargs or None,
                       tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self.processor = load_processor(model_path)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.seed, self.prompt = batch_size, seed, prompt
        self.model_name = model_path
        # recorded with each prediction: a resumed file never mixes backends (nor tensor-parallel sizes, whose
        # reductions run in another order, nor weight dtypes)
        self.backend = ("vllm" + (f":tp{tensor_parallel_size}" if tensor_parallel_size != 1 else "")
                        + (f":{dtype}" if dtype != "auto" else ""))

    def _prompt_text(self) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def score_batch(self, images: list, names: list[str], *, samples: int = 1, readout: str = "generate",
                    temperature: Optional[float] = None, seed: Optional[int] = None) -> list[ScoreResult]:
        from vllm import SamplingParams

        from qponder.parsing import parse_completion

        if readout != "generate":
            raise QponderError("the vLLM backend supports readout 'generate' only; use --backend hf for levels")
        temperature = self.temperature if temperature is None else temperature
        if seed is None:
            seed = (self.seed * 1_000_003 + zlib.crc32("\x00".join(names).encode())) % (2**31)
        params = SamplingParams(n=samples, temperature=temperature, top_p=self.top_p,
                                max_tokens=self.max_new_tokens, seed=seed)
        text = self._prompt_text()
        reqs = [{"prompt": text, "multi_modal_data": {"image": im}} for im in images]
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        results = []
        for name, o in zip(names, outs):
            texts = [c.text for c in o.outputs]
            parsed = [parse_completion(t) for t in texts]
            scores = [p.score for p in parsed]
            m, s = mean_and_std(scores)
            results.append(ScoreResult(image=name, score=m, scores=scores, std=s, raw=texts,
                                       format_ok=[p.format_ok for p in parsed],
                                       reasoning=pick_reasoning(parsed)))
        return results
