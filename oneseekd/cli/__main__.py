from oneseekd.cli import main

main()
