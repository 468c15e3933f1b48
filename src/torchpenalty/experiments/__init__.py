"""Experiments behind the command-line tool: data, models, training runs, results and figures."""
