"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as python blocks).

nbdev_readme needs quarto, which is not installable here; this keeps README.md in sync with the notebook instead.
`python .ci/readme.py --check` exits 1 when README.md is out of date."""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / "nbs" / "index.ipynb").read_text())
parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if not src or src.startswith("#| hide"):
        continue
    if cell["cell_type"] == "markdown":
        parts.append(src.replace("](images/", "](nbs/images/"))
    elif cell["cell_type"] == "code":
        code = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip()
        parts.append("```python\n" + code + "\n```")
text = "<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook -->\n\n" + "\n\n".join(parts) + "\n"
out = root / "README.md"
if "--check" in sys.argv:
    if out.read_text() != text:
        print("README.md is out of sync with nbs/index.ipynb: run python .ci/readme.py")
        sys.exit(1)
else:
    out.write_text(text)
