"""How users reach plaudit: the BentoML HTTP service (`app`), the CLI (`cli`), and the
functions and schemas both share (`api`, `schemas`, `config`)."""
