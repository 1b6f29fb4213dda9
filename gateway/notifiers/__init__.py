"""Customer notification channels behind one interface (e-mail, SMS/WeCom-style webhook)."""
