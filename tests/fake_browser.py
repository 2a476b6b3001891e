"""A stand-in web browser for $BROWSER: it approves the login the way a person would.

Python's webbrowser waits for a $BROWSER command to exit, so this forks and
returns at once; the child drives the login and writes the last page's
status and URL to $FAKE_BROWSER_RESULT.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if os.fork() == 0:
    from oauth_provider import browse

    try:
        page = browse(sys.argv[1])
        result = f"{page.status_code} {page.url}"
    except Exception as e:  # noqa: BLE001 - reported to the test
        result = f"error {e!r}"
    Path(os.environ["FAKE_BROWSER_RESULT"]).write_text(result)
    os._exit(0)
