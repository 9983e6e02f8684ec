"""One program per (language, outcome) for the language tests: read two integers, print their
sum. `wrong` prints the sum plus one; `compile_error` does not compile (in an interpreted
language: does not parse, so it fails when run); `runtime_error` exits non-zero; `timeout`
never ends."""
from __future__ import annotations

OUTCOMES = ("correct", "wrong", "compile_error", "runtime_error", "timeout")
COMPILED = {"c", "cpp", "java", "go", "rust", "typescript"}

PROGRAMS: dict[str, dict[str, str]] = {
    "python": {
        "correct": "a, b = map(int, input().split())\nprint(a + b)\n",
        "wrong": "a, b = map(int, input().split())\nprint(a + b + 1)\n",
        "compile_error": "def broken(:\n    pass\n",
        "runtime_error": "raise SystemExit(3)\n",
        "timeout": "while True:\n    pass\n",
    },
    "c": {
        "correct": "#include <stdio.h>\nint main(void) { long a, b; scanf(\"%ld %ld\", &a, &b); "
                   "printf(\"%ld\\n\", a + b); return 0; }\n",
        "wrong": "#include <stdio.h>\nint main(void) { long a, b; scanf(\"%ld %ld\", &a, &b); "
                 "printf(\"%ld\\n\", a + b + 1); return 0; }\n",
        "compile_error": "int main(void) { return undeclared; }\n",
        "runtime_error": "#include <stdlib.h>\nint main(void) { abort(); }\n",
        "timeout": "int main(void) { volatile int x = 0; for (;;) x++; }\n",
    },
    "cpp": {
        "correct": "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }\n",
        "wrong": "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b + 1 << '\\n'; }\n",
        "compile_error": "#include <vector>\nint main() { std::vector<int> v = 3; }\n",
        "runtime_error": "#include <stdexcept>\nint main() { throw std::runtime_error(\"no\"); }\n",
        "timeout": "int main() { volatile long x = 0; for (;;) x++; }\n",
    },
    "java": {
        "correct": "import java.util.*;\npublic class Main { public static void main(String[] a) { "
                   "Scanner s = new Scanner(System.in); System.out.println(s.nextLong() + s.nextLong()); } }\n",
        "wrong": "import java.util.*;\npublic class Main { public static void main(String[] a) { "
                 "Scanner s = new Scanner(System.in); System.out.println(s.nextLong() + s.nextLong() + 1); } }\n",
        "compile_error": "public class Main { public static void main(String[] a) { int x = \"no\"; } }\n",
        "runtime_error": "public class Main { public static void main(String[] a) { "
                         "throw new IllegalStateException(\"no\"); } }\n",
        "timeout": "public class Main { public static void main(String[] a) { long x = 0; while (true) x++; } }\n",
    },
    "nodejs": {
        "correct": "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n"
                   "console.log(a + b);\n",
        "wrong": "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n"
                 "console.log(a + b + 1);\n",
        "compile_error": "function broken( {\n",
        "runtime_error": "throw new Error('no');\n",
        "timeout": "for (;;) {}\n",
    },
    "go": {
        "correct": "package main\nimport \"fmt\"\nfunc main() { var a, b int64; fmt.Scan(&a, &b); fmt.Println(a + b) }\n",
        "wrong": "package main\nimport \"fmt\"\nfunc main() { var a, b int64; fmt.Scan(&a, &b); "
                 "fmt.Println(a + b + 1) }\n",
        "compile_error": "package main\nfunc main() { var x int = \"no\" }\n",
        "runtime_error": "package main\nfunc main() { panic(\"no\") }\n",
        "timeout": "package main\nfunc main() { x := 0; for { x++ } }\n",
    },
    "rust": {
        "correct": "use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s)"
                   ".unwrap(); let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect(); "
                   "println!(\"{}\", v[0] + v[1]); }\n",
        "wrong": "use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s)"
                 ".unwrap(); let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect(); "
                 "println!(\"{}\", v[0] + v[1] + 1); }\n",
        "compile_error": "fn main() { let x: i32 = \"no\"; }\n",
        "runtime_error": "fn main() { panic!(\"no\"); }\n",
        "timeout": "fn main() { let mut x: u64 = 0; loop { x = unsafe { std::ptr::read_volatile(&x) } + 1; } }\n",
    },
    "bash": {
        "correct": "read a b\necho $((a + b))\n",
        "wrong": "read a b\necho $((a + b + 1))\n",
        "compile_error": "if then fi (\n",
        "runtime_error": "exit 3\n",
        "timeout": "while true; do :; done\n",
    },
}
INPUT, OUTPUT = "2 40\n", "42\n"
