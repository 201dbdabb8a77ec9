"""The documentation: the site builds strictly, its equations render offline, and the examples of the
README and of the docs' pages work.

- The site: ``sphinx -W --keep-going -n`` (any warning, unresolved reference or broken internal link
  fails), once per test run, into a temporary folder.
- In a browser: two pages, served from 127.0.0.1 and opened in headless Chromium, typeset every
  equation with the MathJax the site ships, and load nothing from any other host.
- The examples (the conventions are in docs/README.md): every ``dvae`` command line of a bash or
  console block parses (and the specs under experiments/ it names load), every python block runs
  (a page's blocks in order, in one namespace), every yaml block is a sweep spec that loads; a block
  whose info string says ``notest`` is left out.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from discrete_vae.cli import build_parser
from discrete_vae.sweep import load_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MATH_PAGES = ["methods/relaxations.html", "api/distributions.html"]  # prose math ($...$), docstring math


def pages() -> list[Path]:
    """README.md and the site's Markdown pages."""
    found = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
    return [README, *found]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------------- the site builds


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                            "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
                           capture_output=True, text=True, cwd=ROOT)
    assert build.returncode == 0, f"the strict docs build failed:\n{build.stderr}"
    return out / "html"


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file() and (site / "cli.html").is_file()
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert list((site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_site_loads_assets_from_itself(site: Path) -> None:
    """No page's script, style sheet, font or image comes from another host (a CDN)."""
    asset = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)=\"([^\"]*)\"", re.I)
    for page in site.rglob("*.html"):
        for url in asset.findall(page.read_text(encoding="utf-8")):
            assert not urlsplit(url).netloc, f"{page.relative_to(site)} loads {url}"
    for style in site.rglob("*.css"):
        remote = re.findall(r"(?:@import|url\()\s*[\"']?(?:https?:)?//", style.read_text(encoding="utf-8"))
        assert not remote, f"{style.relative_to(site)} loads from another host"


def test_every_module_is_documented() -> None:
    """Each module of the package appears in an ``automodule`` of an API page."""
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^\.\. automodule:: ([\w.]+)", page.read_text(), flags=re.M))
    package = ROOT / "src" / "discrete_vae"
    modules = {".".join(("discrete_vae", *p.relative_to(package).with_suffix("").parts))
               .removesuffix(".__init__") for p in package.rglob("*.py")}
    missing = sorted(modules - documented - {"discrete_vae", "discrete_vae.__main__"})
    assert not missing, f"not in any docs/api page: {', '.join(missing)}"


# ------------------------------------------------------------------------ equations, in a browser


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Rendered(html.parser.HTMLParser):
    """What a reader sees of a typeset page: the equations MathJax made, its errors, and the text left
    outside them (not in code, scripts or styles)."""

    SKIP = {"script", "style", "pre", "code", "mjx-container"}

    def __init__(self) -> None:
        super().__init__()
        self.equations = self.errors = 0
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.equations += tag == "mjx-container"
        self.errors += tag == "mjx-merror" or any(name == "data-mjx-error" for name, _ in attrs)
        if tag not in ("br", "img", "hr", "meta", "link", "input", "wbr", "source"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        if not self.SKIP.intersection(self.open):
            self.text.append(data)


def _math_count(page: Path) -> int:
    """The equations Sphinx wrote into a page, inline and displayed."""
    return len(re.findall(r"class=\"math[ \"]", page.read_text(encoding="utf-8")))


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (its top frame's site is the server's), from a Chromium net log."""
    text = net_log.read_text(encoding="utf-8").rstrip().rstrip(",")
    log = json.loads(text if text.endswith("}") else text + "]}")  # a log cut short at exit
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start_job and "url" in params:
            ours = str(params.get("network_isolation_key", "")).startswith("http://127.0.0.1")
            if ours or str(params.get("initiator", "")).startswith("http://127.0.0.1"):
                urls.append(params["url"])
    return urls


@pytest.mark.skipif(CHROMIUM is None,
                    reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
@pytest.mark.parametrize("page", MATH_PAGES)
def test_equations_render_offline(page: str, site: Path, served: str, tmp_path: Path) -> None:
    """MathJax typesets every equation of the page, without errors or TeX left over, and neither the page
    nor MathJax (its fonts, its extensions) asks any host but 127.0.0.1 for anything. Every other host
    name resolves to nothing for the browser, so no request can leave the machine either way."""
    expected = _math_count(site / page)
    assert expected >= 3, f"{page} has {expected} equations; the test wants a page with math"
    net_log = tmp_path / "net-log.json"
    browser = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--no-pings", "--disable-domain-reliability",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={net_log}",
         "--virtual-time-budget=30000", "--dump-dom", f"{served}/{page}"],
        capture_output=True, text=True, timeout=120)
    assert browser.returncode == 0, browser.stderr[-2000:]
    rendered = _Rendered()
    rendered.feed(browser.stdout)
    assert rendered.equations >= expected, f"{page}: {rendered.equations} of {expected} equations typeset"
    assert rendered.errors == 0, f"{page}: {rendered.errors} equations MathJax could not typeset"
    text = "".join(rendered.text)
    for delimiter in ("\\(", "\\)", "\\[", "\\]", "$$"):
        assert delimiter not in text, f"{page}: raw TeX {delimiter!r} in the rendered text"
    assert not re.search(r"\$[^\s$][^$\n]*\$", text), f"{page}: raw $...$ math in the rendered text"

    requests = _page_requests(net_log)
    assert any("/_static/mathjax/tex-chtml.js" in url for url in requests), requests
    assert any(url.endswith(".woff") for url in requests), "MathJax loaded none of its fonts"
    elsewhere = [url for url in requests if urlsplit(url).hostname != "127.0.0.1"]
    assert not elsewhere, f"{page} asked other hosts for {elsewhere}"


# ------------------------------------------------------------------------------- the examples work

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^\n`]*)\n"
                   r"(?P<body>.*?)^(?P=indent)(?P=fence)\s*$", flags=re.S | re.M)


def blocks(path: Path, *languages: str) -> list[str]:
    """The fenced blocks of a page in these languages, without those marked ``notest``."""
    found = []
    for m in FENCE.finditer(path.read_text(encoding="utf-8")):
        info = m["info"].split()
        if info and info[0] in languages and "notest" not in info[1:]:
            found.append(m["body"])
    return found


def dvae_commands(path: Path) -> list[list[str]]:
    """The arguments of every ``dvae`` command line in a page's bash and console blocks."""
    commands = []
    for block in blocks(path, "bash", "console", "sh", "shell"):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            words: list[str] = []
            for word in [*lexer, ";"]:
                if word not in {";", "&", "&&", "|", "||"}:
                    words.append(word)
                    continue
                while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value dvae ...
                    words = words[1:]
                if words and words[0] == "dvae":
                    commands.append(words[1:])
                words = []
    return commands


def test_readme_has_examples() -> None:
    assert blocks(README, "python"), "README has no Python example"
    assert len(dvae_commands(README)) >= 6


COMMANDS = [(page, argv) for page in pages() for argv in dvae_commands(page)]


@pytest.mark.parametrize(("page", "argv"), COMMANDS,
                         ids=[f"{page_id(p)}: {' '.join(a)[:40]}" for p, a in COMMANDS])
def test_command_parses(page: Path, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]
    if args.command == "sweep" and Path(args.spec).parts[:1] == ("experiments",):
        load_spec(ROOT / args.spec)  # a shipped spec: it is there, and it reads


SPECS = [(page, text) for page in pages() for text in blocks(page, "yaml", "yml")]


@pytest.mark.parametrize(("page", "text"), SPECS, ids=[f"{page_id(p)}-{i}" for i, (p, _) in enumerate(SPECS)])
def test_sweep_spec_reads(page: Path, text: str, tmp_path: Path) -> None:
    """A spec shown on a page is valid, in its quick form too; it may extend a shipped spec, as if it were
    one of experiments/."""
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "example.yaml"
    path.write_text(text)
    assert load_spec(path).points() and load_spec(path, quick=True).points()


RUNNABLE = [page for page in pages() if blocks(page, "python")]


@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
def test_python_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's python blocks run in order, in one namespace, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for code in blocks(page, "python"):
        exec(compile(code, str(page), "exec"), namespace)  # noqa: S102
    if page == README:
        assert "result" in namespace and namespace["result"]["nll"] > 0


# ------------------------------------------------------------------------------- the front page, results


def test_readme_is_a_front_page() -> None:
    """README.md fits on a page and links each headline result to its results page."""
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    linked = set(re.findall(r"\(docs/results/([\w-]+)\.md\)", text))
    assert linked and all((DOCS / "results" / f"{name}.md").is_file() for name in linked)


EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_spec_has_its_results_page_with_a_marked_place_per_table(path: Path) -> None:
    """Each experiments/NAME.yaml names docs/results/NAME.md as its page:, which holds the report markers
    of every table of the spec (so that ``dvae sweep SPEC --report`` rewrites them in place) and a
    provenance line in each."""
    from discrete_vae.sweep.report import BEGIN, END

    spec = load_spec(path)
    assert spec.page is not None and spec.page.resolve() == DOCS / "results" / f"{path.stem}.md"
    text = spec.page.read_text()
    for table in spec.tables:
        assert text.count(BEGIN.format(table.name)) == 1 and text.count(END.format(table.name)) == 1
        block = text.split(BEGIN.format(table.name))[1].split(END.format(table.name))[0]
        assert "Command: `" in block and "Date: " in block and "Machine: " in block, table.name
