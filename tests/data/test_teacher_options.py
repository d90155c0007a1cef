"""Teacher options on the command line (`--teacher PATH,key=value`) and in a `--teachers` YAML file."""

from __future__ import annotations

import pytest

from jasper_jax.data.teacher_encoding import TeacherSpec, specs_from_arguments, specs_from_file


def test_options_after_the_path_are_typed_and_win_over_flags():
    specs = specs_from_arguments(
        ["/m/nv,name=nv,append_eos=true,padding_side=right,trust_remote_code=yes", "/m/stella,dense=8192"],
        None,
        ["s2p_query"],
        None,
    )
    assert specs[0] == TeacherSpec(
        "nv", "/m/nv", specs[0].prompt, append_eos=True, padding_side="right", trust_remote_code=True
    )
    assert specs[0].prompt.startswith("Instruct: Given a web search query")
    assert specs[1].name == "stella" and specs[1].dense == 8192 and specs[1].options() == {"dense": 8192}
    with pytest.raises(ValueError, match="unknown teacher option 'densse'"):
        specs_from_arguments(["/m/s,densse=8"], None, None, None)
    with pytest.raises(ValueError, match="dense='big' is not a int"):
        specs_from_arguments(["/m/s,dense=big"], None, None, None)


def test_teachers_yaml(tmp_path):
    file = tmp_path / "teachers.yaml"
    file.write_text(
        "teachers:\n"
        "  - {path: /m/NV-Embed-v2, name: nv_embed, append_eos: true, instruction: Retrieve passages}\n"
        "  - {path: /m/stella_en_1.5B_v5, dense: 8192}\n"
    )
    nv, stella = specs_from_file(file)
    assert (nv.name, nv.append_eos, nv.instruction) == ("nv_embed", True, "Retrieve passages")
    assert (stella.name, stella.dense, stella.backend) == ("stella_en_1.5B_v5", 8192, "auto")
    (tmp_path / "bad.yaml").write_text("- {name: x}\n")
    with pytest.raises(ValueError, match="each with a path"):
        specs_from_file(tmp_path / "bad.yaml")
