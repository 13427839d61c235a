"""Teacher pre-training step with class prompts: every class per step (before) vs at most one prompt per image of the
batch (after, `ammkd.class_prompts`), timed side by side for C classes at batch B (1 thread, CPU).

    python benchmarks/prompt_dedup.py --classes 100 --batch 32
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from resumable import cpu_name

from kdmobile.models.clip_teacher import ClipTeacher, parse_teacher, with_image_size
from kdmobile.ammkd.train import class_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--teacher", default="kd-vit-s")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = ClipTeacher(with_image_size(parse_teacher(a.teacher), a.size))
    opt = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-6)
    classes = [f"class {i}" for i in range(a.classes)]
    x = torch.randn(a.batch, 3, a.size, a.size)
    target = torch.randint(a.classes, (a.batch,))

    def step(dedup: bool) -> float:
        t = time.perf_counter()
        prompts, index = (class_prompts(target, classes, "a photo of a {}.") if dedup
                          else ([f"a photo of a {c}." for c in classes], target))
        img, txt = teacher(x, teacher.tokenize(prompts))
        loss = F.cross_entropy(teacher.logit_scale() * img @ txt.T, index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    step(False), step(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.rounds):
        for dedup in (False, True):
            times[dedup].append(step(dedup))
    before, after = sorted(times[False])[a.rounds // 2], sorted(times[True])[a.rounds // 2]
    print(f"{cpu_name()}; load {os.getloadavg()[0]:.2f}; {a.teacher} at {a.size} px, batch {a.batch}, "
          f"{a.classes} classes, {len(set(target.tolist()))} distinct in the batch, 1 thread")
    print(f"teacher step, median of {a.rounds}: every class {before:.3f} s, one prompt per distinct class of the "
          f"batch {after:.3f} s ({before / after:.2f}x faster)")


if __name__ == "__main__":
    main()
