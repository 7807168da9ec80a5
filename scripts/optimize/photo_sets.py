#!/usr/bin/env python3
"""Real-photo data sets for quantizing and evaluating the zoo's EfficientNet-Lite0.

The photos are scikit-image's sample photos, taken from the wheel the model zoo already caches
(models/zoo_cache, `python scripts/model_zoo.py fetch --only photos`); nothing is downloaded.
Calibration and evaluation use different photos:

- calibration.npz: astronaut, hubble_deep_field, immunohistochemistry, retina, motorcycle_right,
  coins, each as is plus 7 random crops/flips (48 samples);
- evaluation.npz: coffee, chelsea, rocket, motorcycle_left, each as is plus AUG random
  crops (30-100 % of the area, aspect 3/4-4/3) with a random horizontal flip (4 + 4*AUG samples);
- training.npz: the calibration photos again, each as is plus TRAIN_AUG other random crops/flips
  (6 + 6*TRAIN_AUG samples, shuffled), for fine-tuning (quantization-aware training with
  self-distillation);
- tuning.npz: camera, brick, grass, gravel, moon, clock_motion (in neither set above), each as is
  plus 15 random crops/flips (96 samples, shuffled), for choosing a fine-tuning recipe without
  looking at evaluation.npz.

Preprocessing is the zoo's contract (docs/models.md): RGB, short side 256 (bilinear), centre crop
224, (x - 127) / 128, NCHW. Seeded: the same files on every run. Needs numpy and Pillow.

  python scripts/optimize/photo_sets.py OUT_DIR [--aug 50] [--train-aug 63]

calibration.npz and evaluation.npz come first from one seeded generator (the same files as
before the other two sets existed); training.npz and tuning.npz from generators of their own.
"""
import argparse
import glob
import io
import os
import zipfile

import numpy as np
from PIL import Image

CALIBRATION = ["astronaut.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "motorcycle_right.png", "coins.png"]
EVALUATION = ["coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
TUNING = ["camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "clock_motion.png"]


def preprocess(img):
    img = img.convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)


def augment(img, rng):
    w, h = img.size
    for _ in range(20):
        area = w * h * rng.uniform(0.3, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if cw <= w and ch <= h:
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
            break
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--aug", type=int, default=50, help="augmented crops per evaluation photo")
    ap.add_argument("--train-aug", type=int, default=63, help="augmented crops per calibration photo in training.npz")
    ap.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), "..", "..", "models", "zoo_cache"))
    a = ap.parse_args()
    wheels = glob.glob(os.path.join(a.cache, "scikit_image-*.whl"))
    if not wheels:
        raise SystemExit(f"no scikit-image wheel in {a.cache}: run python scripts/model_zoo.py fetch --only photos")
    z = zipfile.ZipFile(wheels[0])
    photo = lambda name: Image.open(io.BytesIO(z.read(f"skimage/data/{name}")))

    def each_with_crops(names, aug, rng):
        """Each photo as is, then `aug` random crops/flips of it."""
        samples = []
        for name in names:
            img = photo(name)
            samples.append(preprocess(img))
            samples.extend(preprocess(augment(img, rng)) for _ in range(aug))
        return samples

    rng = np.random.default_rng(20261129)
    os.makedirs(a.out, exist_ok=True)
    cal = each_with_crops(CALIBRATION, 7, rng)
    ev = []
    for name in EVALUATION:
        ev.append(preprocess(photo(name)))
    for name in EVALUATION:
        img = photo(name)
        ev.extend(preprocess(augment(img, rng)) for _ in range(a.aug))
    sets = {"calibration": cal, "evaluation": ev}
    for name, photos, aug, seed in [("training", CALIBRATION, a.train_aug, 20261205), ("tuning", TUNING, 15, 20261206)]:
        rng = np.random.default_rng(seed)
        samples = each_with_crops(photos, aug, rng)
        # Shuffled, so that any first N samples (qat's --calibration-limit) mix the photos.
        sets[name] = [samples[i] for i in rng.permutation(len(samples))]
    for name, samples in sets.items():
        np.savez(os.path.join(a.out, f"{name}.npz"), input=np.stack(samples))
    print(", ".join(f"{a.out}/{name}.npz ({len(samples)})" for name, samples in sets.items()))


if __name__ == "__main__":
    main()
