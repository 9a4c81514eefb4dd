"""What ``python scripts/train.py --help`` lists: the config groups' options, one line each,
read from ``conf/`` when the help is printed (so a new model or experiment file is listed
with no other change). An option's line is the first sentence of its file's leading comment.

Importing this module registers the ``${fodl_catalog:<what>}`` resolver that
``conf/hydra/help/*.yaml`` use; the entry points import it before Hydra starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# groups listed on their own lines with a description per option; the others get one line each
DETAILED = ("model", "experiment")
HIDDEN = ("hydra", "paths")  # Hydra's own settings, and paths (set through paths.* / env vars)


def description(path: Path) -> str:
    """The first sentence of the comment block at the top of a YAML file ('' if none)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s.startswith("#"):
            if lines or s:
                break
            continue
        s = s.lstrip("#").strip()
        if s.startswith("@package"):
            continue
        if not s:
            if lines:
                break
            continue
        lines.append(s)
    text = ""
    for s in lines:  # a word hyphenated across two comment lines is joined back
        text += s if text.endswith("-") and s[:1].islower() else (" " + s if text else s)
    for m in re.finditer(r"(?<=[a-z0-9%)\]])\.(\s|$)", text):
        if not re.search(r"\b(al|e\.g|i\.e|etc|vs|cf|Fig|fig)$", text[: m.start()]):
            return text[: m.start() + 1]
    return text


def options(group: str) -> list[str]:
    """The option names of a config group (``book/ch3_logreg`` for nested files)."""
    root = CONF_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def _width() -> int:
    return max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))


def _clip(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(room - 1, 0)].rstrip() + "…"


def detailed(group: str) -> str:
    """``  name    description`` for every option of ``group``."""
    names = options(group)
    pad = max((len(n) for n in names), default=0) + 2
    room = _width() - pad - 2
    return "\n".join(f"  {n:<{pad}}{_clip(description(CONF_DIR / group / (n + '.yaml')), room)}".rstrip()
                     for n in names)


def groups() -> str:
    """``  group    option, option, ...`` for every other group, with its default marked."""
    names = sorted(p.name for p in CONF_DIR.iterdir()
                   if p.is_dir() and p.name not in DETAILED + HIDDEN and not p.name.startswith("."))
    defaults = _defaults()
    pad = max(len(n) for n in names) + 2
    lines = []
    for g in names:
        opts = [f"{o} (default)" if defaults.get(g) == o else o for o in options(g)]
        if g in defaults and defaults[g] is None:
            opts.append("null (default: off)")
        lines.append(f"  {g:<{pad}}{', '.join(opts)}")
    return "\n".join(lines)


def _defaults() -> dict[str, str | None]:
    import yaml

    out: dict[str, str | None] = {}
    for entry in yaml.safe_load((CONF_DIR / "train.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            for k, v in entry.items():
                out[str(k)] = v
    return out


def catalog(what: str) -> str:
    """``groups``, ``<group>`` (one line per option) or ``<group>_options`` (comma-separated)."""
    if what == "groups":
        text = groups()
    elif what.endswith("_options"):
        text = ", ".join(options(what.removesuffix("_options")))
    else:
        text = detailed(what)
    return text.replace("$", "$$")  # the help template is a string.Template


if not OmegaConf.has_resolver("fodl_catalog"):
    OmegaConf.register_new_resolver("fodl_catalog", catalog)
