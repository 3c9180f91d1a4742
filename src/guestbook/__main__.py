from guestbook.cli import main

raise SystemExit(main())
