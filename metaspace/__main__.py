from metaspace.cli import main

main()
