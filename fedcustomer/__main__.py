"""Allow ``python -m fedcustomer``."""

from fedcustomer.cli import main

main()
