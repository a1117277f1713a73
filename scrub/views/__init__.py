"""What people look at: PNG figures (``plots``) and self-contained HTML views (``report``: what notebooks and
``--html`` show; ``discovery``: the same for a ``Discovery``; ``page``, ``graph``, ``detail``, ``attention``: the
parts, drawn by ``static/views.js``)."""
