"""Sandbox payment gateways: local stand-ins for Alipay and WeChat Pay (v3 and v2).

They speak the providers' wire formats for the calls Ranqi uses, sign with their own
key pairs (generated under the instance folder on first use), send notifies with the
providers' retry schedule, and show a cashier page with Pay / Cancel. They are
enabled only by explicit configuration, never in production.
"""
