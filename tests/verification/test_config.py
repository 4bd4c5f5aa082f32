import pytest
from pydantic import ValidationError

from controller.verification.config import LineConfig, demo_line


def test_demo_line_shape():
    cfg = demo_line()
    assert cfg.station_ids == list(range(1, 49))
    assert cfg.unit_of(25).id == 2


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"colour": "red"}, "colour"),
        ({"temperature": {"limit_c": 300}}, "temperature.limit_c"),
        ({"units": []}, "units"),
    ],
)
def test_bad_line_config_names_the_field(patch, fragment):
    data = demo_line(1, 2).model_dump()
    data.update(patch)
    with pytest.raises(ValidationError) as exc:
        LineConfig.model_validate(data)
    assert fragment in str(exc.value)


def test_duplicate_station_ids_refused():
    data = demo_line(2, 2).model_dump()
    data["units"][1]["stations"][0]["id"] = 1
    with pytest.raises(
        ValidationError, match=r"station ids must be unique line-wide, repeated: \[1\]"
    ):
        LineConfig.model_validate(data)
