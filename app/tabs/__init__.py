"""One module per screen. Each ``build_*`` function lays out its tab inside the caller's gr.Blocks and wires its
own events; what several tabs share (settings, supervisor, the form's components) comes in an AppContext."""
