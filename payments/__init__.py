"""Payment providers behind one interface (payments.base), plus sandbox gateways."""
