"""One citation style for the whole book: author–year in the text *and* in the bibliography.

The text cites with ``bibtex_reference_style: author_year`` ("Dao et al., 2022"); pybtex's
formatting styles label the list alphabetically ("[DFE+22]") by default. This extension
registers ``authoryear``, the ``unsrt`` formatting sorted by author and year whose labels are
the same author–year text, and makes it the default.
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    parts = person.prelast_names + person.last_names
    return " ".join(parts).replace("{", "").replace("}", "")


class AuthorYearLabelStyle(BaseLabelStyle):
    """``Surname, year`` for one author, ``A and B, year`` for two, ``A et al., year`` beyond;
    a, b, … appended when two entries would get the same label."""

    def format_labels(self, sorted_entries):
        labels = [self._label(e) for e in sorted_entries]
        seen, count = Counter(), Counter(labels)
        for label in labels:
            if count[label] > 1:
                seen[label] += 1
                yield f"{label}{chr(ord('a') + seen[label] - 1)}"
            else:
                yield label

    @staticmethod
    def _label(entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        year = entry.fields.get("year", "n.d.")
        others = any(str(p) == "others" for p in persons)
        persons = [p for p in persons if str(p) != "others"]
        if not persons:
            return f"{entry.fields.get('title', entry.key)[:20]}, {year}"
        if len(persons) == 1 and not others:
            names = _surname(persons[0])
        elif len(persons) == 2 and not others:
            names = f"{_surname(persons[0])} and {_surname(persons[1])}"
        else:
            names = f"{_surname(persons[0])} et al."
        return f"{names}, {year}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
