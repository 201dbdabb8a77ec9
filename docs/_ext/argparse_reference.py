"""``.. argparse-reference:: module:function``: every command, subcommand and flag of an argparse parser.

A section per (sub)command, with its usage, what it does and its flags by group. Help strings are shown
as the terminal shows them (plain text, not reStructuredText), with ``%(default)s`` and the like
expanded as ``--help`` expands them.
"""

from __future__ import annotations

import argparse
import importlib

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _parser(spec: str) -> argparse.ArgumentParser:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)()


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order ``--help`` lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[argparse.Action]]]:
    """Flag groups by title (groups of one title added one after another read as one)."""
    groups: dict[str, list[argparse.Action]] = {}
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._SubParsersAction)]
        if actions:
            groups.setdefault(group.title or "", []).extend(actions)
    return list(groups.items())


def _invocation(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    return formatter._format_action_invocation(action)


class ArgparseReference(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        parser = _parser(self.arguments[0])
        return self._command(parser, parser.prog, "", top=True)

    def _command(self, parser: argparse.ArgumentParser, prog: str, summary: str,
                 top: bool = False) -> list[nodes.Node]:
        formatter = parser._get_formatter()
        body: list[nodes.Node] = []
        if summary:
            body.append(nodes.paragraph(text=summary[0].upper() + summary[1:] + "."))
        if parser.description:
            body.append(nodes.paragraph(text=parser.description))
        usage = nodes.literal_block(text=parser.format_usage().strip())
        usage["language"] = "text"
        body.append(usage)
        for title, actions in _groups(parser):
            body.append(nodes.rubric(text=title[0].upper() + title[1:]))
            items = nodes.definition_list()
            for action in actions:
                term = nodes.term("", "", nodes.literal(text=_invocation(action, formatter)))
                help_text = formatter._expand_help(action) if action.help else ""
                items += nodes.definition_list_item("", term,
                                                    nodes.definition("", nodes.paragraph(text=help_text)))
            body.append(items)
        if parser.epilog:
            body.append(nodes.paragraph(text=parser.epilog))
        for name, help_line, sub in _subcommands(parser):
            body += self._command(sub, f"{prog} {name}", help_line)
        if top:
            return body
        section = nodes.section(ids=[nodes.make_id(prog)], names=[nodes.fully_normalize_name(prog)])
        section += nodes.title(text=prog)
        section += body
        self.state.document.note_implicit_target(section, section)
        return [section]


def setup(app) -> dict[str, object]:
    app.add_directive("argparse-reference", ArgparseReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
