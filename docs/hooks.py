"""MkDocs hooks: the pages that must not drift from the code are written from it at build time.

* ``<!-- openapi -->`` becomes the list of HTTP operations from the app's OpenAPI schema
  (``segsearch.api.app.create_app().openapi()``), with their bodies, parameters and answers.
* ``<!-- settings -->`` becomes the table of every setting of ``segsearch.settings.Settings``
  (environment variable, default, description).
"""

from __future__ import annotations

import json


def _openapi_markdown() -> str:
    import tempfile

    from segsearch.settings import Settings

    from segsearch.api.app import create_app

    with tempfile.TemporaryDirectory() as d:
        schema = create_app(Settings(data=d)).openapi()
    out = [f"Generated from the server's OpenAPI document (`/openapi.json`, version {schema['info']['version']}).", ""]
    groups: dict[str, list] = {}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            groups.setdefault((op.get("tags") or ["other"])[0], []).append((path, method, op))
    for tag, ops in groups.items():
        out += [f"### {tag}", ""]
        for path, method, op in ops:
            out += [f"#### `{method.upper()} {path}`", ""]
            doc = (op.get("description") or op.get("summary") or "").strip()
            if doc:
                out += [doc, ""]
            params = [p for p in op.get("parameters", []) if p.get("in") in ("path", "query")]
            if params:
                out += ["| parameter | in | required | description |", "|---|---|---|---|"]
                for p in params:
                    desc = (p.get("description") or p.get("schema", {}).get("description") or "").replace("\n", " ")
                    out.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | {desc} |")
                out.append("")
            body = op.get("requestBody", {}).get("content", {})
            if body:
                kinds = ", ".join(f"`{k}`" for k in body)
                ref = next(iter(body.values())).get("schema", {}).get("$ref", "")
                out += [f"Body: {kinds}" + (f" (`{ref.rsplit('/', 1)[-1]}`)" if ref else "") + ".", ""]
            answers = op.get("responses", {}).items()
            codes = ", ".join(f"{code} {r.get('description', '')}".strip() for code, r in answers)
            out += [f"Answers: {codes}.", ""]
    out += ["### Schemas", "", "The bodies named above, as JSON Schema:", ""]
    for name, s in schema.get("components", {}).get("schemas", {}).items():
        out += [f'??? note "{name}"', "    ```json"]
        out += ["    " + line for line in json.dumps(s, indent=1).splitlines()]
        out += ["    ```", ""]
    return "\n".join(out)


def _settings_markdown() -> str:
    from pydantic_core import PydanticUndefined

    from segsearch.settings import Settings

    rows = ["| environment variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        if f.default_factory is not None:
            default = "(computed)"
        elif f.default is PydanticUndefined or f.default is None:
            default = "–"
        else:
            default = f"`{f.default}`"
        desc = (f.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `SEGSEARCH_{name.upper()}` | {default} | {desc} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- openapi -->" in markdown:
        markdown = markdown.replace("<!-- openapi -->", _openapi_markdown())
    if "<!-- settings -->" in markdown:
        markdown = markdown.replace("<!-- settings -->", _settings_markdown())
    return markdown
