from minivm.cli import main

main()
