"""The compiler's back end. sgc generates no machine or Python code: a compiled program *is* its
optimized IR plus its compiled constraint tables, so the back end's job is to write that down.
`artifact.py` serializes a module into the `.sgc` artifact (and reads it back as data only);
`dumps.py` renders graphs for people (text, DOT, SVG, HTML). The package keeps the conventional
name `codegen` so the pipeline reads parser -> passes -> codegen."""
