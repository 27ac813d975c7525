from fusepipe.cli import main

main()
