"""mkdocs hook: one API reference page per subpackage (and top-level module) of attnprobe.

The pages are generated at build time from the package itself, so a new module appears in the
reference without editing the site configuration.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = Path(__file__).resolve().parents[2] / "attnprobe"


def _modules(folder: Path, prefix: str) -> list[str]:
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            out.append(f"{prefix}.{path.stem}")
    return out


def _pages() -> dict[str, str]:
    pages = {"api/index.md": "# API reference\n\n" + "\n".join(
        f"- [`attnprobe.{sub.name}`]({sub.name}.md)" for sub in sorted(PACKAGE.iterdir())
        if (sub / "__init__.py").is_file()) + "\n- [top-level modules](core.md)\n"}
    for sub in sorted(PACKAGE.iterdir()):
        if not (sub / "__init__.py").is_file():
            continue
        name = f"attnprobe.{sub.name}"
        body = [f"# `{name}`", "", f"::: {name}", "    options:", "      members: false", ""]
        for module in _modules(sub, name):
            body += [f"::: {module}", ""]
        pages[f"api/{sub.name}.md"] = "\n".join(body)
    core = ["# Top-level modules", ""] + [f"::: {m}\n" for m in _modules(PACKAGE, "attnprobe")]
    pages["api/core.md"] = "\n".join(core)
    return pages


def on_files(files, config):
    for uri, content in _pages().items():
        files.append(File.generated(config, uri, content=content))
    return files
