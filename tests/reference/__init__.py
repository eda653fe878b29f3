"""Short, independent re-statements of published losses, the oracles of the loss tests.

Each function restates one published behaviour with plain torch operations (loops, boolean masks)
and names it in a comment; none calls the code it checks (docs/DESIGN.md, "Tests").
"""
