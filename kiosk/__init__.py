"""The kiosk program (nfcpy reader loop, kiosk API client, touch UI): see the kiosk issue."""
