"""Layer 6, views: plots, figures, reports and the HTML explorer; they read data and write files."""
