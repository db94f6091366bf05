from threadstore.cli import main

main()
