#!/usr/bin/env bash
# Run HERE (with network), in the repository root, before a GPU session: the wheels the device image lacks
# (it has torch, numpy, scipy, matplotlib, tensorboard, opencv, lxml, etils, absl-py, pyyaml, tqdm, imageio, but no
# MuJoCo, dm_control, gymnasium, pydantic, higher), for its Python 3.12, into .whl/ (git-ignored via
# .git/info/exclude). dm_control's wheel (56 MB) is slimmed to what the suite needs (its soccer/walker/dog assets
# and test data dropped), so everything stays under the device tool's 64 MiB per call.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --ignore-requires-python --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "mujoco<4" dm_control==1.0.50 dm-env dm-tree glfw pyopengl websockets \
  "pydantic>=2.6" pydantic_core annotated-types typing-inspection \
  "gymnasium>=1.0" farama-notifications higher==0.2.1 betty-ml==0.2.1 "typing-extensions>=4.16"
python3 - <<'PY'
import pathlib, zipfile
src = next(pathlib.Path(".whl").glob("dm_control-*.whl"))
drop = ("dm_control/locomotion/soccer/", "dm_control/locomotion/walkers/assets", "dm_control/suite/dog_assets/",
        "dm_control/mujoco/testing/", "dm_control/blender/", ".png")
tmp = src.with_suffix(".slim")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not any(d in item.filename for d in drop):
            zout.writestr(item, zin.read(item.filename))
tmp.replace(src)  # pip installs it with --no-deps and without checking RECORD hashes of removed files
PY
du -sh .whl
