from shvya_engage.app import main

main()
