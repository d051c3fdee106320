from oneseekd.service import main

main()
