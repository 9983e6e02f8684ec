"""The languages the sandbox runs, as data: one row each, read by one runner (`programs.py`).

A row says where the source goes, how it is compiled (inside the sandbox, into /out) and run
(the build read-only at /code), with what environment and extra read-only paths, which code
fence tags name it, and what its runtime needs beyond the configured limits (a JVM or a Go
binary reserves more address space than it uses, and runs threads). Adding a language is a
row here and a line in the language test matrix.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cache

JVM_FLAGS = ("-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:ReservedCodeCacheSize=64m",
             "-XX:MaxMetaspaceSize=128m", "-XX:CompressedClassSpaceSize=64m")


@dataclass(frozen=True)
class Language:
    name: str  # SandboxFusion's name for it
    tags: tuple[str, ...]  # code fence tags, lowercase
    source: str  # the source file's name in /code
    run: tuple[str, ...]  # inside the sandbox; the build is at /code
    compile: tuple[str, ...] = ()  # writes into /out; none for interpreted languages
    tools: tuple[str, ...] = ()  # executables it needs (found on /usr/bin)
    install: str = ""  # the command that adds them
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[str, ...] = ()  # host paths (globs) its toolchain reads outside /usr
    memory_floor_mb: int = 0  # address space below which the runtime cannot start
    compile_memory_mb: int = 2048
    processes: int = 0  # threads and processes on top of the configured limit
    main_class: str = ""  # a regex whose group names the source file (Java's public class)
    empty_program: str = ""  # a program that does nothing: what a run costs before any work (efficiency)

    def source_name(self, code: str) -> str:
        """The file the code goes in: Java's must be named after its public class."""
        if self.main_class and (found := re.search(self.main_class, code)):
            return found.group(1) + os.path.splitext(self.source)[1]
        return self.source

    def argv(self, template: tuple[str, ...], code: str) -> tuple[str, ...]:
        name = self.source_name(code)
        return tuple(a.replace("{source}", name).replace("{stem}", os.path.splitext(name)[0]) for a in template)

    @property
    def missing(self) -> list[str]:
        return [tool for tool in self.tools if _tool(tool) is None]

    @property
    def extra_binds(self) -> tuple[str, ...]:
        return tuple(path for pattern in self.binds for path in sorted(glob.glob(pattern)))


LANGUAGES: dict[str, Language] = {row.name: row for row in (
    Language("python", ("python", "py", "python3"), "main.py", ("python3", "-I", "-B", "/code/{source}"),
             tools=("python3",), install="apt-get install python3", empty_program="pass"),
    Language("c", ("c",), "main.c", ("/code/main",),
             compile=("gcc", "-O2", "-std=gnu17", "-o", "/out/main", "/code/{source}", "-lm"),
             tools=("gcc",), install="apt-get install gcc", compile_memory_mb=1024,
             empty_program="int main(void) { return 0; }"),
    Language("cpp", ("cpp", "c++", "cc", "cxx"), "main.cpp", ("/code/main",),
             compile=("g++", "-O2", "-std=gnu++17", "-o", "/out/main", "/code/{source}"),
             tools=("g++",), install="apt-get install g++", compile_memory_mb=2048,
             empty_program="int main() { return 0; }"),
    Language("java", ("java",), "Main.java", ("java", "-Xmx256m", *JVM_FLAGS, "-cp", "/code", "{stem}"),
             compile=("javac", "-J-Xmx512m", *(f"-J{f}" for f in JVM_FLAGS), "-encoding", "UTF-8", "-d", "/out",
                      "/code/{source}"),
             tools=("java", "javac"), install="apt-get install default-jdk-headless",
             binds=("/etc/java-*",), memory_floor_mb=1024, compile_memory_mb=3072, processes=64,
             main_class=r"public\s+(?:final\s+|abstract\s+)*class\s+([A-Za-z_]\w*)",
             empty_program="public class Main { public static void main(String[] args) {} }"),
    Language("nodejs", ("javascript", "js", "node", "nodejs"), "main.js", ("node", "/code/{source}"),
             tools=("node",), install="apt-get install nodejs", memory_floor_mb=2048, processes=16),
    Language("typescript", ("typescript", "ts"), "main.ts", ("node", "/code/main.js"),
             compile=("tsc", "--target", "es2020", "--module", "commonjs", "--outDir", "/out", "/code/{source}"),
             tools=("node", "tsc"), install="npm install -g typescript", memory_floor_mb=2048, processes=16),
    Language("go", ("go", "golang"), "main.go", ("/code/main",),
             compile=("go", "build", "-o", "/out/main", "/code/{source}"),
             tools=("go",), install="apt-get install golang-go",
             env=(("GOCACHE", "/tmp/gocache"), ("GOPATH", "/tmp/gopath"), ("GO111MODULE", "off"),
                  ("CGO_ENABLED", "0")),
             memory_floor_mb=1024, compile_memory_mb=3072, processes=64,
             empty_program="package main\n\nfunc main() {}"),
    Language("rust", ("rust", "rs"), "main.rs", ("/code/main",),
             compile=("rustc", "-O", "--edition", "2021", "-C", "linker=gcc", "-o", "/out/main", "/code/{source}"),
             tools=("rustc", "gcc"), install="apt-get install rustc", compile_memory_mb=3072, processes=16,
             empty_program="fn main() {}"),
    Language("bash", ("bash", "sh", "shell"), "main.sh", ("bash", "/code/{source}"),
             tools=("bash",), install="apt-get install bash", empty_program=":"),
)}
DEFAULT_LANGUAGE = "python"
BY_TAG = {tag: row for row in LANGUAGES.values() for tag in row.tags}


@cache
def _tool(name: str) -> str | None:
    """The tool's path as the sandbox sees it: found on /usr/bin and, links resolved, under /usr
    (a rustup in ~/.cargo is not in the sandbox)."""
    found = shutil.which(name, path="/usr/bin:/bin")
    if found is None or not os.path.realpath(found).startswith("/usr/"):
        return None
    return os.path.realpath(found)


def resolve(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A command line with its tool as a real path (`/usr/bin/java` is a link into /etc)."""
    return (_tool(argv[0]) or argv[0], *argv[1:]) if not argv[0].startswith("/") else argv


def by_name(name: str) -> Language | None:
    """A language from SandboxFusion's name or any of its tags."""
    key = name.strip().lower()
    return LANGUAGES.get(key) or BY_TAG.get(key)


def availability() -> dict[str, dict]:
    """Each language, whether it runs here, and if not what adds it (shown in GET /models)."""
    return {row.name: ({"available": True} if not row.missing else
                       {"available": False, "missing": row.missing, "install": row.install})
            for row in LANGUAGES.values()}


@dataclass
class Source:
    """The program found in a response: its code and language, or why there is none."""

    code: str
    language: Language | None
    tags: list[str] = field(default_factory=list)  # every fence tag seen, for the message


FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.S)


def find_source(response: str, language: str | None = None) -> Source:
    """The response's code: its fenced blocks in one language, joined in order (untagged
    fences count as that language); a response without fences is code whole. The language is
    the item's when given, else the first fence tag that names one, else Python."""
    fences = [(tag.strip().split()[0].lower() if tag.strip() else "", code) for tag, code in FENCE.findall(response)]
    wanted = by_name(language) if language else None
    if not fences:
        return Source(response, wanted or LANGUAGES[DEFAULT_LANGUAGE])
    tags = [tag for tag, _ in fences if tag]
    if wanted is None:
        wanted = next((BY_TAG[t] for t in tags if t in BY_TAG), None if tags else LANGUAGES[DEFAULT_LANGUAGE])
        if wanted is None:
            return Source("", None, tags)
    code = "\n".join(code for tag, code in fences if tag == "" or BY_TAG.get(tag) is wanted)
    return Source(code, wanted, tags)
