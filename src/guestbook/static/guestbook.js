// Progressive enhancement of the guestbook page; the page works without it.
"use strict";
