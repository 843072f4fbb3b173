"""Config mistakes answered in one sentence before Lightning loads, and a one-screen ``vadapt fit --help``.

LightningCLI (jsonargparse) checks a config only after importing Lightning, torch and every task (several times
the cost of ``import torch``), and reports a misspelt key as a whole type-check tree. The mistakes users make
most — a missing file, bad YAML, an unknown key, a value of the wrong kind, an unknown vadapt ``class_path`` —
are checked here first, with the YAML line and the closest valid key, against ``config_schema.json``: the options
jsonargparse accepts for every vadapt task, datamodule, adapter config and callback, written by
``python -m vadapt.config_schema --write`` (``tests/test_config_errors.py`` keeps it current). Trainer options come
from the installed Lightning's ``Trainer.__init__`` signature, read from its source (parsed, not imported).
What passes here still goes through jsonargparse, which stays the authority: this check only refuses what
jsonargparse would refuse.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("config_schema.json")
#: top-level keys of the fit / validate / test / predict subcommands (LightningCLI)
TOP_LEVEL = ("config", "print_config", "seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler",
             "ckpt_path", "weights_only", "verbose", "return_predictions")
CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")
SECTION_BASE = {"model": "lightning.pytorch.core.module.LightningModule",
                "data": "lightning.pytorch.core.datamodule.LightningDataModule"}
#: Trainer options shown by the short help (all are accepted)
COMMON_TRAINER = ("max_epochs", "max_steps", "default_root_dir", "accelerator", "devices", "precision",
                  "fast_dev_run", "limit_train_batches", "limit_val_batches", "check_val_every_n_epoch",
                  "enable_progress_bar", "logger", "callbacks")


class ConfigMistake(ValueError):
    """A config file or command-line option that jsonargparse would refuse; the message says where and why."""


# ---- the schema ---------------------------------------------------------------------------------------------------
@cache
def load_schema() -> dict[str, Any]:
    """``config_schema.json``: ``{"classes": {path: {"aliases", "bases", "summary", "params": {name: {"help",
    "default", "required", "accepts"}}}}}``; nested dataclass fields are dotted names (``prompting.num_positive``)."""
    return json.loads(SCHEMA_PATH.read_text())


def resolve_class(path: str) -> str | None:
    """The schema's name of ``path`` (its full name, a re-export such as ``vadapt.tasks.X``, or a bare class name,
    as jsonargparse resolves them), or None."""
    for name, entry in load_schema()["classes"].items():
        if path == name or path in entry["aliases"] or ("." not in path and name.rsplit(".", 1)[1] == path):
            return name
    return None


@cache
def trainer_options() -> tuple[str, ...]:
    """The keyword arguments of the installed ``lightning.pytorch.Trainer``, read from its source."""
    spec = importlib.util.find_spec("lightning")  # a top-level name: found without importing it
    if spec is None or not spec.submodule_search_locations:
        return ()
    source = Path(spec.submodule_search_locations[0]) / "pytorch" / "trainer" / "trainer.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return tuple(a.arg for a in [*item.args.args, *item.args.kwonlyargs] if a.arg != "self")
    return ()


def _closest(word: str, options: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean `PREFIX<option>`?"`` for the (up to two) options closest to ``word``, or ``""``."""
    matches = difflib.get_close_matches(word, list(options), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(f'`{prefix}{m}`' for m in matches)}?" if matches else ""


# ---- values -------------------------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):  # jsonargparse's YAML reads 3e-4 as a number (PyYAML: a string)
        for kind, convert in (("int", int), ("float", float)):
            try:
                convert(value)
                return kind
            except ValueError:
                pass
    for kind, types in (("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, types):
            return kind
    return "other"


def _value_problem(value: Any, accepts: dict[str, Any] | None) -> str | None:
    """Why ``value`` cannot be given to a parameter accepting ``accepts`` (None: it can, or we cannot tell)."""
    if not accepts:
        return None
    kind = _kind(value)
    if kind == "none" and "none" in accepts.get("kinds", ()):
        return None
    if "choices" in accepts and not (kind == "none" and "none" in accepts.get("kinds", ())):
        if value in accepts["choices"]:
            return None
        choices = [str(c) for c in accepts["choices"]]
        return f"must be one of {', '.join(choices)}; got {value!r}{_closest(str(value), choices)}"
    kinds = set(accepts.get("kinds", ()))
    if accepts.get("subclass_of"):
        kinds |= {"dict", "str"}  # {class_path: ..., init_args: ...} (checked by the caller) or a class name
    if "float" in kinds:
        kinds.add("int")
    if "str" in kinds and kind in ("int", "float", "bool"):
        return None  # jsonargparse may read a number as a string
    if kind in kinds:
        return None
    wanted = " or ".join(sorted(k if k != "dict" else "mapping" for k in kinds))
    return f"must be {wanted}; got {value!r}"


# ---- YAML with line numbers ---------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The document of ``path`` and the (1-based) line of every mapping key, by its key path."""
    import yaml

    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigMistake(f"{path} is not a text (YAML) file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigMistake(f"{path}{where}: not valid YAML ({problem})") from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode):
                    lines[(*prefix, key.value)] = key.start_mark.line + 1
                    walk(value, (*prefix, key.value))

    walk(node, ())
    return document, lines


# ---- the check ----------------------------------------------------------------------------------------------------
class _Checker:
    """Walks one config (a YAML document or the overrides of a command line) and raises the first mistake."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int], flag_style: bool = False) -> None:
        self.source, self.lines, self.flag_style = source, lines, flag_style

    def where(self, keys: tuple[str, ...]) -> str:
        if self.flag_style:
            return f"--{'.'.join(keys)}"
        line = self.lines.get(keys)
        return f"{self.source}{f' line {line}' if line else ''}: `{'.'.join(keys)}`"

    def fail(self, keys: tuple[str, ...], problem: str) -> None:
        raise ConfigMistake(f"{self.where(keys)} {problem}")

    def top(self, document: Any) -> None:
        if document is None:
            return
        if not isinstance(document, dict):
            raise ConfigMistake(f"{self.source}: a config is a mapping of keys (trainer, model, data, ...); "
                                f"this file holds a {type(document).__name__}")
        for key, value in document.items():
            if key not in TOP_LEVEL:
                self.fail((key,), f"is not a top-level key{_closest(str(key), TOP_LEVEL)} (keys: trainer, model, "
                          "data, seed_everything, ckpt_path, optimizer, lr_scheduler)")
            if key == "trainer" and isinstance(value, dict):
                self.trainer(value)
            elif key in SECTION_BASE and isinstance(value, dict):
                self.class_section((key,), value, SECTION_BASE[key])

    def trainer(self, section: dict[str, Any]) -> None:
        options = trainer_options()
        if not options:
            return
        for key in section:
            if key not in options:
                self.fail(("trainer", key), f"is not an option of lightning's Trainer{_closest(str(key), options)}")

    def class_section(self, keys: tuple[str, ...], section: dict[str, Any], base: str | None) -> None:
        """``{class_path: ..., init_args: {...}}`` naming a class of the schema (others are left to jsonargparse)."""
        path = section.get("class_path")
        if not isinstance(path, str):
            return
        name = resolve_class(path)
        if name is None:
            if path.startswith("vadapt."):
                self.fail((*keys, "class_path"), f"{path} is not a vadapt class{self.similar_class(path, base)}")
            return
        bases = load_schema()["classes"][name]["bases"]
        if base is not None and base not in bases:
            kind = base.rsplit(".", 1)[1]
            self.fail((*keys, "class_path"), f"{path} is not a {kind}{self.similar_class(path, base)}")
        for key in section:
            if key not in CLASS_KEYS:
                self.fail((*keys, key), f"is not allowed beside class_path (only init_args and dict_kwargs); "
                          f"options of {name.rsplit('.', 1)[1]} go under init_args")
        init_args = section.get("init_args")
        if isinstance(init_args, dict):
            self.params((*keys, "init_args"), init_args, name, "")

    def similar_class(self, path: str, base: str | None) -> str:
        classes = load_schema()["classes"]
        candidates = {alias: name for name, entry in classes.items() if base is None or base in entry["bases"]
                      for alias in (name, *entry["aliases"])}
        found = _closest(path, candidates)
        if not found:
            short = {a.rsplit(".", 1)[1]: a for a in candidates}
            matches = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(short), n=2, cutoff=0.6)
            found = f"; did you mean {' or '.join(f'`{short[m]}`' for m in matches)}?" if matches else ""
        return found

    def params(self, keys: tuple[str, ...], given: dict[str, Any], name: str, prefix: str) -> None:
        params = load_schema()["classes"][name]["params"]
        short = name.rsplit(".", 1)[1]
        for key, value in given.items():
            full = f"{prefix}{key}"
            if full in params:
                self.value((*keys, key), value, params[full])
            elif any(p.startswith(full + ".") for p in params) and isinstance(value, dict):
                self.params((*keys, key), value, name, full + ".")  # a dataclass option given as a mapping
            else:
                options = list(dict.fromkeys(p[len(prefix):].split(".")[0] for p in params if p.startswith(prefix)))
                hint = _closest(str(key), options) or (f"; its options: {', '.join(options[:12])}"
                                                       f"{' ...' if len(options) > 12 else ''}")
                self.fail((*keys, key), f"is not an option of {short}{hint}")

    def value(self, keys: tuple[str, ...], value: Any, param: dict[str, Any]) -> None:
        accepts = param.get("accepts")
        problem = _value_problem(value, accepts)
        if problem is not None:
            self.fail(keys, problem)
        if accepts and accepts.get("subclass_of") and isinstance(value, dict):
            self.class_section(keys, value, accepts["subclass_of"])


def check_files(paths: list[str]) -> list[tuple[Any, Path]]:
    """Each config's document, after checking it; raises :class:`ConfigMistake`."""
    documents = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise ConfigMistake(f"config file not found: {text}")
        if path.is_dir():
            raise ConfigMistake(f"config {text} is a folder; give a .yaml file")
        document, lines = _read_yaml(path)
        _Checker(text, lines).top(document)
        documents.append((document, path))
    return documents


def _split_options(argv: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """(config paths, other ``--key value`` options in order) of a LightningCLI subcommand's arguments."""
    configs, options = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            i += 1
            continue
        key, _, inline = arg.lstrip("-").partition("=")
        key = key.rstrip("+")  # --trainer.logger+=CLASS appends to a list
        takes_value = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        value = inline if "=" in arg else (argv[i + 1] if takes_value else None)
        if key in ("c", "config"):
            if value is not None:
                configs.append(value)
        elif key not in ("h", "help"):
            options.append((key, value))
        i += 1 + (1 if takes_value else 0)
    return configs, options


def _section_class(documents: list[tuple[Any, Path]], options: list[tuple[str, str | None]],
                   section: str) -> str | None:
    """The class named for ``model`` / ``data`` by the last config or ``--model CLASS`` option."""
    name = None
    for document, _ in documents:
        if isinstance(document, dict) and isinstance(document.get(section), dict):
            name = document[section].get("class_path", name)
    for key, value in options:
        if key in (section, f"{section}.class_path") and value is not None and not value.endswith((".yaml", ".yml")):
            name = value
    return resolve_class(name) if isinstance(name, str) else None


def _abbreviates(word: str, options: Iterable[str]) -> str | None:
    """``word`` if it is an option, else the one option it abbreviates (argparse takes a unique prefix for the
    whole name), else None."""
    options = list(options)
    if word in options:
        return word
    longer = [o for o in options if o.startswith(word)]
    return longer[0] if len(longer) == 1 else None


def check_command(argv: list[str]) -> None:
    """Check a ``fit | validate | test | predict`` command line (``argv`` without the subcommand) and its config
    files; raises :class:`ConfigMistake` with a sentence naming the key, where it is and the closest valid one."""
    import yaml

    if not SCHEMA_PATH.is_file():
        return  # a source checkout without the generated schema: jsonargparse checks alone
    configs, options = _split_options(argv)
    documents = check_files(configs)
    checker = _Checker("", {}, flag_style=True)
    for key, value in options:
        parts = tuple(p for p in key.split(".") if p != "init_args")
        if parts[0] not in TOP_LEVEL:
            raise ConfigMistake(f"--{key}: unknown option{_closest(parts[0], TOP_LEVEL, '--')}")
        if len(parts) < 2 or parts[-1] in ("help", "class_path", "dict_kwargs") or value is None:
            continue
        if parts[0] == "trainer" and len(parts) == 2 and trainer_options() and not _abbreviates(parts[1],
                                                                                                trainer_options()):
            raise ConfigMistake(f"--{key}: not an option of lightning's Trainer"
                                f"{_closest(parts[1], trainer_options(), '--trainer.')}")
        if parts[0] in SECTION_BASE:
            name = _section_class(documents, options, parts[0])
            if name is None:
                continue
            params = load_schema()["classes"][name]["params"]
            dotted = ".".join(parts[1:])
            if any(".".join(parts[1:i]) in params for i in range(2, len(parts))):
                continue  # an option of a nested class (--model.adapter.init_args.r): left to jsonargparse
            dotted = _abbreviates(dotted, params) or dotted
            if dotted in params:
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    continue
                checker.value((key,), parsed, params[dotted])
            elif not any(p.startswith(dotted + ".") for p in params):
                hint = _closest(dotted, params, f"--{parts[0]}.init_args.")
                raise ConfigMistake(f"--{key}: not an option of {name.rsplit('.', 1)[1]}{hint}")


# ---- the short help -----------------------------------------------------------------------------------------------
def _display_name(name: str) -> str:
    """The shortest name a config may use for a schema class (``vadapt.tasks.X`` rather than its module's)."""
    return min([name, *load_schema()["classes"][name]["aliases"]], key=len)


def _short(text: str, width: int = 100) -> str:
    text = text.replace("``", "`")
    if len(text) <= width:
        return text
    cut = text[: width - 4].rsplit(" ", 1)[0]
    return (cut if len(cut) > width // 2 else text[: width - 4]) + " ..."


def _param_lines(name: str, section: str, given: dict[str, Any]) -> list[str]:
    """The options of class ``name`` (one line each: name, default or the config's value, help)."""
    params = load_schema()["classes"][name]["params"]
    width = max((len(p) for p in params), default=0)
    lines = []
    for param, info in params.items():
        value = given
        for part in param.split("."):
            value = value.get(part, KeyError) if isinstance(value, dict) else KeyError
        shown = (f"= {value!r} (config)" if value is not KeyError
                 else "required" if info["required"] else f"= {info['default']}")
        lines.append(f"  {param.ljust(width)}  {_short(shown, 34).ljust(34)}  {_short(info['help'], 80)}".rstrip())
    return [f"--{section} {_display_name(name)} (YAML: {section}.init_args.NAME; command line: --{section}.NAME):",
            *lines]


def _given(documents: list[tuple[Any, Path]], section: str) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for document, _ in documents:
        if isinstance(document, dict) and isinstance(document.get(section), dict):
            init_args = document[section].get("init_args")
            given.update(init_args if isinstance(init_args, dict) else {})
    return given


def short_help(command: str, argv: list[str]) -> str:
    """``vadapt COMMAND --help``: the options of the config's task and datamodule (or the list of both), the
    common Trainer options, and how to get LightningCLI's full help."""
    configs, options = _split_options(argv)
    documents = check_files(configs)
    out = [f"usage: vadapt {command} --config CONFIG.yaml [--KEY VALUE ...]", "",
           "Runs LightningCLI on a YAML config; any key of it can be given or overridden on the command line,",
           "e.g. --trainer.max_epochs 5, --model.lr 3e-4, --data.batch_size 4.", ""]
    classes = load_schema()["classes"]
    bases = {b for entry in classes.values() for b in entry["bases"][1:]}
    for section in SECTION_BASE:
        name = _section_class(documents, options, section)
        if name is not None:
            out += [*_param_lines(name, section, _given(documents, section)), ""]
            continue
        listed = [n for n, e in classes.items() if SECTION_BASE[section] in e["bases"] and e["params"]
                  and n not in bases and not n.rsplit(".", 1)[1].startswith("_")]
        width = max(len(_display_name(n)) for n in listed)
        out += [f"--{section} CLASS, one of (`vadapt {command} --help --config CFG` lists a config's options):",
                *(f"  {_display_name(n).ljust(width)}  {_short(classes[n]['summary'], 70)}" for n in listed), ""]
    out += ["--trainer.KEY: Lightning Trainer options; most used: " + ", ".join(COMMON_TRAINER[:6]) + ",",
            "  " + ", ".join(COMMON_TRAINER[6:]),
            "--seed_everything N, --ckpt_path PATH (resume), --print_config (show the merged config)", "",
            f"Every option with its type (slow: loads Lightning): vadapt {command} --help-all"]
    return "\n".join(out)


# ---- writing the schema (imports every task: for developers, `python -m vadapt.config_schema --write`) ------------
def _accepts(hint: Any) -> dict[str, Any] | None:
    """What kinds of YAML value a type hint accepts, or None when this module cannot tell."""
    import inspect
    import types
    import typing
    from collections import abc
    from pathlib import PurePath

    if hint is type(None):
        return {"kinds": ["none"]}
    simple = {bool: "bool", int: "int", float: "float", str: "str"}
    if hint in simple:
        return {"kinds": [simple[hint]]}
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return {"kinds": ["str"]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"kinds": [], "choices": list(args)}
    if origin in (list, tuple, abc.Sequence, set, frozenset):
        return {"kinds": ["list"]}
    if origin in (dict, abc.Mapping):
        return {"kinds": ["dict"]}
    if origin in (typing.Union, types.UnionType):
        merged: dict[str, Any] = {"kinds": []}
        for arg in args:
            part = _accepts(arg)
            if part is None:
                return None
            merged["kinds"] = sorted({*merged["kinds"], *part.get("kinds", [])})
            for key in ("choices", "subclass_of"):
                if key in part:
                    if key in merged:
                        return None
                    merged[key] = part[key]
        return merged
    if inspect.isclass(hint) and hint.__module__.startswith("vadapt."):
        return {"kinds": [], "subclass_of": f"{hint.__module__}.{hint.__qualname__}"}
    return None


def _schema_classes() -> list[type]:
    import inspect
    import pkgutil

    import lightning as L

    import vadapt.adapters
    import vadapt.data
    import vadapt.tasks
    from vadapt.adapters.base import AdapterConfig

    found: dict[str, type] = {}
    for package in (vadapt.tasks, vadapt.data, vadapt.adapters):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                wanted = (L.LightningModule, L.LightningDataModule, L.Callback, AdapterConfig)
                if cls.__module__ == module.__name__ and issubclass(cls, wanted) and not inspect.isabstract(cls):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def _aliases(cls: type) -> list[str]:
    parts = cls.__module__.split(".")
    out = []
    for i in range(2, len(parts)):
        module = importlib.import_module(".".join(parts[:i]))
        if getattr(module, cls.__name__, None) is cls:
            out.append(f"{module.__name__}.{cls.__name__}")
    return out


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


def build_schema() -> dict[str, Any]:
    """The schema of every vadapt task, datamodule, callback and adapter config, from jsonargparse's own reading of
    their signatures and docstrings."""
    from jsonargparse import ArgumentParser

    classes = {}
    for cls in _schema_classes():
        parser = ArgumentParser()
        parser.add_class_arguments(cls, "x", fail_untyped=False)
        params = {}
        for action in parser._actions:
            dest = action.dest
            if not dest.startswith("x.") or dest.endswith(".help") or action.help == "Path to a configuration file.":
                continue
            hint = getattr(action, "_typehint", None)
            help_text = " ".join((action.help or "").split())
            params[dest[2:]] = {
                "help": help_text if len(help_text) <= 110 else help_text[:107].rsplit(" ", 1)[0] + " ...",
                "default": repr(action.default) if action.default != argparse.SUPPRESS else "-",
                "required": bool(action.required),
                "accepts": _accepts(hint) if hint is not None else None,
            }
        name = f"{cls.__module__}.{cls.__qualname__}"
        classes[name] = {"aliases": _aliases(cls), "summary": _summary(cls),
                         "bases": [f"{b.__module__}.{b.__qualname__}" for b in cls.__mro__], "params": params}
    return {"classes": classes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vadapt.config_schema", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"(re)write {SCHEMA_PATH.name}")
    args = parser.parse_args(argv)
    schema = build_schema()
    text = json.dumps(schema, indent=1) + "\n"  # parameters in signature order
    if args.write:
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH} ({len(schema['classes'])} classes)")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
