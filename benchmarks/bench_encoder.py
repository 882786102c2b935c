"""Benchmark of image encoding on the CPU: milliseconds per image of the frozen encoder (the feature cache,
``mmlib predict``, external validation) and of the lesion segmenter's forward pass, with contiguous (NCHW) input
and with channels-last input, which :class:`mmlib.encoders.ImageEncoder` and
:meth:`mmlib.segmentation.LesionUNet.stem` now use.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_encoder.py [--batch 32] [--threads 2]

Prints the figures and the largest difference between the two layouts' outputs; asserts nothing.
"""

from __future__ import annotations

import argparse
import time


def per_image_ms(fn, x, repeats: int) -> float:
    fn(x)  # warm-up (oneDNN picks its kernels)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t) / repeats / x.shape[0] * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    from mmlib.encoders import create_encoder
    from mmlib.segmentation import SegmenterSettings, build_network

    torch.set_num_threads(args.threads)
    enc = create_encoder("efficientnet_lite0", weights="imagenet", levels=[3, 4, 5]).eval()
    seg = build_network(SegmenterSettings()).eval()
    b = seg.body

    def stem_nchw(x):  # LesionUNet.stem as it was: contiguous input throughout
        y = b.bn1(b.conv_stem(x))
        for block in b.blocks[: seg.frozen_blocks]:
            y = block(y)
        return y

    cases = [
        # ImageEncoder._forward_levels is the encoder's forward without the channels-last conversion
        ("encoder efficientnet_lite0, blocks 3-5, 224 px", enc, enc._forward_levels, 224),
        ("segmenter stem (frozen blocks), 160 px", seg.stem, stem_nchw, 160),
    ]
    print(f"{args.threads} threads, batch {args.batch}, {torch.__version__}")
    with torch.no_grad():
        for name, channels_last, contiguous, size in cases:
            x = torch.randn(args.batch, 3, size, size)
            a = per_image_ms(contiguous, x, args.repeats)
            c = per_image_ms(channels_last, x, args.repeats)
            ref, out = contiguous(x), channels_last(x)
            ref, out = (ref[-1] if isinstance(ref, list) else ref), (out[-1] if isinstance(out, list) else out)
            print(f"{name}: contiguous {a:.1f} ms/image, channels-last {c:.1f} ms/image ({a / c:.2f}x); "
                  f"largest output difference {(ref - out).abs().max().item():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
