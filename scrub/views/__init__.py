"""What people look at: PNG figures (``plots``) and self-contained HTML views (``report``: what notebooks and
``--html`` show; ``page``, ``graph``, ``detail``, ``attention``: the parts, drawn by ``static/views.js``)."""
