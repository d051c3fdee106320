from oneseekd.entry import main

main()
