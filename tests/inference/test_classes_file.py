"""Classes files: names in output order, optional =weight, clear errors naming the line."""

from __future__ import annotations

import pytest

from inference.classes_file import ClassEntry, parse_classes_file


def test_names_weights_comments_and_blank_lines():
    text = "# COCO, first three\nPerson=2\n\n bicycle \ncar = 0.5\n"
    assert parse_classes_file(text) == (
        ClassEntry("person", 2.0),
        ClassEntry("bicycle", None),
        ClassEntry("car", 0.5),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("face\n=2\n", "models/x/classes.txt:2: empty class name"),
        ("face\nFace\n", "models/x/classes.txt:2: class 'face' listed twice"),
        ("face=heavy\n", "models/x/classes.txt:1: weight 'heavy' is not a number"),
        ("face=0\n", "models/x/classes.txt:1: weight must be a finite number > 0"),
        ("face=nan\n", "models/x/classes.txt:1: weight must be a finite number > 0"),
        ("face=-1\n", "models/x/classes.txt:1: weight must be a finite number > 0"),
    ],
)
def test_bad_lines_are_refused_with_the_file_and_line(text, message):
    with pytest.raises(ValueError) as caught:
        parse_classes_file(text, source="models/x/classes.txt")
    assert str(caught.value) == message
