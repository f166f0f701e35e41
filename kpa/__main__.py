from kpa.cli import main

main()
