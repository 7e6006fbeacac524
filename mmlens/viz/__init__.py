"""HoloViews plots and the Panel explorer; static HTML export."""
