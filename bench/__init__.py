"""taskq's benchmark harness: taskq side by side with pgqueuer and procrastinate.

Run it with `make bench` (or `python -m bench --help`). Nothing in app/ imports this
package; its extra dependencies live in bench/requirements.txt.
"""
