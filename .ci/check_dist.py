"""The built wheel and sdist (in the folder given) both hold the LICENSE; the sdist holds what its tests need."""

import sys
import tarfile
import zipfile
from pathlib import Path

folder = Path(sys.argv[1])
(wheel,) = folder.glob("*.whl")
(sdist,) = folder.glob("*.tar.gz")
wheel_names = zipfile.ZipFile(wheel).namelist()
with tarfile.open(sdist) as archive:
    sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
missing = []
if not any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names):
    missing.append(f"{wheel.name}: LICENSE")
needed = ["LICENSE", "README.md", "tests/conftest.py", "tests/zoo_envs/__init__.py", "docs/conf.py", "examples/cartpole.py"]
needed += ["benchmarks/__init__.py", "sb3_ppo_kl/zoo/hyperparams/ppo_kl.yml"]
missing += [f"{sdist.name}: {name}" for name in needed if name not in sdist_names]
if missing:
    sys.exit("missing: " + ", ".join(missing))
print(f"{wheel.name} and {sdist.name} hold the LICENSE; the sdist holds tests, docs, examples and benchmarks")
