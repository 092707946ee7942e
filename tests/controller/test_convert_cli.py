"""``sie-operator convert`` both ways, on files, directories and stdin, and its one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sie_operator.catalog import yamlio
from sie_operator.catalog.ids import id_to_filename
from sie_operator.cli import main
from sie_operator.controller.convert_command import NULLS_NOTE

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
sie_id: acme/bert
hf_id: acme/bert
description: kept
profiles:
  default:
    max_batch_tokens: 8192
    compute_precision: null
    adapter_path: sie_server.adapters.bert_flash:BertFlashAdapter
"""


def run(
    args: list[str], capsys: pytest.CaptureFixture[str], stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(["convert", *args])
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def ordered(data: Any) -> str:
    return json.dumps(data, sort_keys=False)


def test_directory_to_manifests_and_back_is_lossless(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = catalog_dir / "models"
    code, out, err = run([str(models), "--namespace", "sie"], capsys)
    assert code == 0, err
    assert err.strip() == NULLS_NOTE  # the catalog has explicit nulls; say how to keep them
    manifests = list(yaml.safe_load_all(out))
    files = sorted(models.glob("*.yaml"))
    assert len(manifests) == len(files)
    assert all(m["kind"] == "ModelConfig" and m["metadata"]["namespace"] == "sie" for m in manifests)

    stream = tmp_path / "all.yaml"
    stream.write_text(out)
    code, _, err = run(["--to", "sie", str(stream), "-o", str(tmp_path / "sie")], capsys)
    assert code == 0, err
    assert f"wrote {len(files)} file(s)" in err
    assert err.count("\n") == 1  # --to sie has no null note
    for original in files:
        back = tmp_path / "sie" / original.name  # SIE layout: <id with / as __>.yaml
        assert ordered(yamlio.load(back.read_text())) == ordered(yamlio.load(original.read_text()))


def test_files_to_output_dir_named_after_metadata_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yml").write_text(GOOD.replace("acme/bert", "Acme/Other_Model.v2"))
    code, out, err = run(
        [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"), "-o", str(tmp_path / "out")], capsys
    )
    assert code == 0 and out == "", err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["acme-bert.yaml", "acme-other-model-v2.yaml"]
    other = yaml.safe_load((tmp_path / "out" / "acme-other-model-v2.yaml").read_text())
    assert other["spec"]["sieId"] == "Acme/Other_Model.v2"
    assert "namespace" not in other["metadata"]
    assert other["spec"]["profiles"]["default"]["computePrecision"] is None
    assert other["spec"]["extra"] == {"description": "kept"}


def test_kubectl_list_from_stdin_to_sie(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.yaml").write_text(GOOD)
    code, out, _ = run([str(tmp_path / "m.yaml")], capsys)
    assert code == 0
    listing = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(out)], "metadata": {}}
    code, out, err = run(["--to", "sie", "-"], capsys, stdin=yaml.safe_dump(listing))
    assert code == 0, err
    assert ordered(yamlio.load(out)) == ordered(yamlio.load(GOOD))


def test_sie_output_dir_uses_the_store_file_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.yaml").write_text(GOOD)
    code, out, _ = run([str(tmp_path / "m.yaml")], capsys)
    (tmp_path / "mc.yaml").write_text(out)
    code, _, err = run(["--to", "sie", str(tmp_path / "mc.yaml"), "-o", str(tmp_path / "sie")], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "sie").iterdir()] == [f"{id_to_filename('acme/bert')}.yaml"]


@pytest.mark.parametrize(
    ("files", "args", "expected"),
    [
        ({"bad.yaml": "profiles: ["}, [], "bad.yaml: invalid YAML"),
        ({"bad.yaml": "sie_id: acme/x\n"}, [], "bad.yaml: profiles: Field required"),
        (
            {"bad.yaml": "sie_id: a__b\nprofiles: {d: {adapter_path: 'a.b:C'}}\n"},
            [],
            "bad.yaml: Model ID must not",
        ),
        (
            {"bad.yaml": "sie_id: x\nsie_id: y\n"},
            [],
            "bad.yaml: invalid YAML: line 2: duplicate key 'sie_id'",
        ),
        ({"bad.yaml": "- a\n- b\n"}, [], "bad.yaml: not an SIE model config"),
        (
            {"bad.yaml": "apiVersion: sie.dev/v1alpha1\nkind: ModelConfig\n"},
            [],
            "bad.yaml: already a ModelConfig",
        ),
        ({"m.yaml": GOOD}, ["--to", "sie"], "m.yaml: an SIE model config, not a ModelConfig"),
        (
            {"c.yaml": "kind: ConfigMap\napiVersion: v1\n"},
            ["--to", "sie"],
            "c.yaml: not a ModelConfig manifest",
        ),
        (
            {"a.yaml": GOOD, "b.yaml": GOOD.replace("acme/bert", "acme.bert")},
            [],
            "b.yaml: metadata.name 'acme-bert' is also produced by",
        ),
        ({"a.yaml": GOOD}, ["--namespace", "Bad_NS"], "--namespace 'Bad_NS' is not a valid namespace name"),
        (
            {"a.yaml": GOOD},
            ["--to", "sie", "--namespace", "x"],
            "--namespace applies to --to modelconfig only",
        ),
        ({"empty.yaml": ""}, [], "empty.yaml: no YAML documents"),
    ],
    ids=[
        "yaml",
        "schema",
        "model-id",
        "duplicate-key",
        "not-mapping",
        "manifest-to-mc",
        "sie-to-sie",
        "other-kind",
        "name-clash",
        "bad-namespace",
        "namespace-to-sie",
        "empty",
    ],
)
def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], args: list[str], expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out_dir = tmp_path / "out"
    code, out, err = run([*[str(tmp_path / n) for n in files], *args, "-o", str(out_dir)], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sie-operator convert: error: ")
    assert expected in err
    assert not out_dir.exists()  # nothing written when any input is bad


def test_missing_path_and_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml: no such file or directory" in err
    code, _, err = run([str(tmp_path)], capsys)
    assert code == 2 and "no *.yaml or *.yml files in this directory" in err


def test_real_entry_point_gives_one_line_and_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("sie_id: acme/x\nprofiles: {default: {max_batch_tokens: 0, adapter_path: 'a.b:C'}}\n")
    res = subprocess.run(
        # What the `sie-operator` console script runs (not `python -m sie_operator.cli`, which
        # would load cli.py twice, as __main__ and as sie_operator.cli).
        [
            sys.executable,
            "-c",
            "import sys; from sie_operator.cli import main; sys.exit(main())",
            "convert",
            str(bad),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"sie-operator convert: error: {bad}: profiles.default.max_batch_tokens: "
        "Input should be greater than or equal to 1"
    ]
