"""corert's built-in plugins, one folder per optimization area.  Each registers through the ``corert``
entry-point group exactly as a third-party plugin does."""
